"""`kswifi admin vouchers`: make prepaid codes and export them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.commands.common import fail, run_in_transaction
from kswifi.commands.plans import cli_actor, log_to_stderr
from kswifi.control.config import Settings
from kswifi.control.purchases import service
from kswifi.control.purchases.schemas import MAX_VOUCHERS_PER_BATCH
from kswifi.control.security import SecretBox

app = typer.Typer(help="Vouchers: single-use prepaid codes for a plan.", no_args_is_help=True)


@app.command("create")
def create(
    plan: Annotated[str, typer.Option(help="Code of the plan the vouchers buy, e.g. premium")],
    count: Annotated[int, typer.Option(help=f"How many codes, 1 to {MAX_VOUCHERS_PER_BATCH}")] = 1,
) -> None:
    """Make COUNT codes for PLAN and print one per line."""
    log_to_stderr()
    if not 1 <= count <= MAX_VOUCHERS_PER_BATCH:
        fail(f"--count must be between 1 and {MAX_VOUCHERS_PER_BATCH}, not {count}")

    async def work(db: AsyncSession, _secrets: SecretBox, _settings: Settings) -> list[str]:
        return await service.create_vouchers(db, plan_code=plan, count=count, actor=cli_actor())

    codes = run_in_transaction(work)
    typer.echo("\n".join(codes))


@app.command("export")
def export(
    plan: Annotated[str | None, typer.Option(help="Only this plan's vouchers")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the CSV here, not to stdout")
    ] = None,
) -> None:
    """Every voucher as CSV: code, plan, status, who redeemed it and when."""
    log_to_stderr()

    async def work(db: AsyncSession, _secrets: SecretBox, _settings: Settings) -> str:
        return await service.export_vouchers_csv(db, actor=cli_actor(), plan_code=plan)

    text = run_in_transaction(work)
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
    typer.echo(f"wrote {max(0, text.count(chr(10)) - 1)} vouchers to {output}", err=True)
