"""`kswifi admin plans create|list` against a migrated SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from kswifi.cli import app
from kswifi.control.config import get_settings
from kswifi.control.models import AuditEntry, Plan
from kswifi.control.plans.service import MIB
from tests.control.plans.cli_support import CliDatabase

runner = CliRunner()

CREATE = [
    "admin",
    "plans",
    "create",
    "--code",
    "weekend",
    "--name",
    "Weekend Session",
    "--data-mb",
    "3072",
    "--speed-mbps",
    "40",
    "--validity-days",
    "3",
    "--price-cents",
    "999",
    "--currency",
    "EUR",
    "--max-devices",
    "2",
]


async def _plan(db: AsyncSession, code: str) -> Plan | None:
    result: Plan | None = await db.scalar(select(Plan).where(Plan.code == code))
    return result


class TestCreate:
    def test_creates_the_plan_and_audits_it(self, cli_db: CliDatabase) -> None:
        result = runner.invoke(app, CREATE)
        assert result.exit_code == 0, result.output
        assert "created plan weekend" in result.output
        assert "3 GB at 40 Mbps" in result.output
        plan = cli_db.run(lambda db: _plan(db, "weekend"))
        assert plan is not None
        assert (plan.data_limit_bytes, plan.speed_mbps, plan.max_devices) == (3072 * MIB, 40, 2)
        assert (plan.price_cents, plan.currency, plan.is_active) == (999, "EUR", True)

        async def audit(db: AsyncSession) -> list[AuditEntry]:
            return list(await db.scalars(select(AuditEntry)))

        [entry] = cli_db.run(audit)
        assert entry.action == "plan.create"
        assert entry.actor.startswith("cli")
        assert entry.target == "plan:weekend"

    def test_duplicate_code_fails_cleanly(self, cli_db: CliDatabase) -> None:
        args = list(CREATE)
        args[args.index("weekend")] = "basic"
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        assert "already exists" in result.output
        assert "Traceback" not in result.output

    def test_bad_values_fail_with_the_option_name(self, cli_db: CliDatabase) -> None:
        for option, value in [("--data-mb", "0"), ("--currency", "dollars"), ("--code", "A B")]:
            args = list(CREATE)
            args[args.index(option) + 1] = value
            result = runner.invoke(app, args)
            assert result.exit_code == 1, (option, result.output)
            assert option in result.output
        assert cli_db.run(lambda db: _plan(db, "weekend")) is None

    def test_unmigrated_database_is_a_clear_error(
        self, cli_db: CliDatabase, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        empty = Path(cli_db.url.removeprefix("sqlite+aiosqlite:///")).with_name("empty.db")
        monkeypatch.setenv("KSWIFI_DATABASE_URL", f"sqlite+aiosqlite:///{empty}")
        get_settings.cache_clear()
        result = runner.invoke(app, ["admin", "plans", "list"])
        assert result.exit_code == 1
        assert "kswifi db upgrade" in result.output


class TestList:
    def test_lists_every_plan_as_a_table(self, cli_db: CliDatabase) -> None:
        assert runner.invoke(app, CREATE).exit_code == 0
        result = runner.invoke(app, ["admin", "plans", "list"])
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0].split() == [
            "CODE",
            "NAME",
            "DATA",
            "SPEED",
            "VALIDITY",
            "DEVICES",
            "PRICE",
            "STATUS",
        ]
        by_code = {line.split()[0]: line for line in lines[1:]}
        assert set(by_code) == {"basic", "premium", "ultra", "weekend"}
        assert "20 GB" in by_code["ultra"]
        assert "50 Mbps" in by_code["ultra"]
        assert "$39.99" in by_code["ultra"]
        assert "€9.99" in by_code["weekend"]
        assert "on sale" in by_code["basic"]
