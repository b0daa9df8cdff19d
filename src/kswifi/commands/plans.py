"""`kswifi admin plans`: add a plan to the catalog and list the catalog."""

from __future__ import annotations

import getpass
import io
import sys
from collections.abc import Sequence
from typing import Annotated, TextIO, cast

import structlog
import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.commands.common import fail, run_in_transaction
from kswifi.control.config import Settings, get_settings
from kswifi.control.models import Plan
from kswifi.control.plans import service
from kswifi.control.plans.schemas import PlanCreate
from kswifi.control.security import SecretBox
from kswifi.logs import configure_logging

app = typer.Typer(help="Plans: what customers can buy.", no_args_is_help=True)


class _CurrentStderr(io.TextIOBase):
    """Whatever `sys.stderr` is at the moment of writing (test runners swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def log_to_stderr() -> None:
    """Keep log lines off stdout, which carries only the command's output (pipes, files)."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr()))
    )


def cli_actor() -> str:
    """Who the audit log names for a command run at this terminal."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry for this uid (containers)
        return "cli"


def validation_message(exc: ValidationError, options: dict[str, str]) -> str:
    """The first problem in operator words: the option's name, not the model's field."""
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else ""
    return f"{options.get(field, field)}: {error['msg']}"


@app.command("create")
def create(
    code: Annotated[str, typer.Option(help="Short lowercase code, e.g. weekend")],
    name: Annotated[str, typer.Option(help="Name shown to customers")],
    data_mb: Annotated[int, typer.Option(help="Data in MB (1 GB = 1024 MB)")],
    speed_mbps: Annotated[int, typer.Option(help="Speed tier in Mbit/s")],
    validity_days: Annotated[int, typer.Option(help="Days of validity from first use")],
    price_cents: Annotated[int, typer.Option(help="Price in the currency's smallest unit")],
    currency: Annotated[str, typer.Option(help="ISO 4217 code, e.g. USD")] = "USD",
    max_devices: Annotated[int, typer.Option(help="Devices that may share the session")] = 1,
) -> None:
    """Add a plan; print its line of the catalog."""
    log_to_stderr()
    try:
        data = PlanCreate(
            code=code,
            name=name,
            data_limit_mb=data_mb,
            speed_mbps=speed_mbps,
            validity_days=validity_days,
            max_devices=max_devices,
            price_cents=price_cents,
            currency=currency,
        )
    except ValidationError as exc:
        fail(
            validation_message(
                exc,
                {
                    "data_limit_mb": "--data-mb",
                    "speed_mbps": "--speed-mbps",
                    "validity_days": "--validity-days",
                    "max_devices": "--max-devices",
                    "price_cents": "--price-cents",
                    "currency": "--currency",
                    "code": "--code",
                    "name": "--name",
                },
            )
        )

    async def work(db: AsyncSession, _secrets: SecretBox, _settings: Settings) -> Plan:
        return await service.create(db, data, actor=cli_actor())

    plan = run_in_transaction(work)
    typer.echo(f"created plan {plan.code}: {_describe(plan)}")


@app.command("list")
def list_() -> None:
    """Every plan as a table, withdrawn ones included."""
    log_to_stderr()

    async def work(db: AsyncSession, _secrets: SecretBox, _settings: Settings) -> Sequence[Plan]:
        return await service.list_all(db)

    plans = run_in_transaction(work)
    rows = [("CODE", "NAME", "DATA", "SPEED", "VALIDITY", "DEVICES", "PRICE", "STATUS")]
    for plan in plans:
        out = service.to_out(plan)
        rows.append(
            (
                out.code,
                out.name,
                out.data_text,
                f"{out.speed_mbps} Mbps",
                _days(out.validity_days),
                str(out.max_devices),
                f"{out.price_text} ({out.currency})",
                "on sale" if plan.is_active else "withdrawn",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _describe(plan: Plan) -> str:
    out = service.to_out(plan)
    return (
        f"{out.name}, {out.data_text} at {out.speed_mbps} Mbps for {_days(out.validity_days)}, "
        f"{out.max_devices} device(s), {out.price_text}"
    )


def _days(count: int) -> str:
    return f"{count} day{'' if count == 1 else 's'}"
