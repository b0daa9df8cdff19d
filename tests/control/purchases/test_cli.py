"""`kswifi admin vouchers create|export` against a migrated SQLite file."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from kswifi.cli import app
from kswifi.control.models import AuditEntry, Plan, Voucher
from tests.control.plans.cli_support import CliDatabase

runner = CliRunner()
CODE = re.compile(r"^KSW(-[0-9A-HJKMNP-TV-Z]{4}){4}$")


async def _vouchers(db: AsyncSession) -> list[tuple[str, str]]:
    rows = await db.execute(select(Voucher.code, Plan.code).join(Plan, Plan.id == Voucher.plan_id))
    return [(code, plan_code) for code, plan_code in rows]


async def _audit(db: AsyncSession) -> list[AuditEntry]:
    return list(await db.scalars(select(AuditEntry)))


class TestCreate:
    def test_prints_one_code_per_line(self, cli_db: CliDatabase) -> None:
        result = runner.invoke(
            app, ["admin", "vouchers", "create", "--plan", "premium", "--count", "12"]
        )
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert len(lines) == 12
        assert all(CODE.match(line) for line in lines)
        assert sorted(cli_db.run(_vouchers)) == sorted((code, "premium") for code in lines)
        [entry] = cli_db.run(_audit)
        assert (entry.action, entry.target) == ("voucher.create", "plan:premium")
        assert entry.actor.startswith("cli")

    def test_unknown_plan_is_a_clear_error(self, cli_db: CliDatabase) -> None:
        result = runner.invoke(
            app, ["admin", "vouchers", "create", "--plan", "gold", "--count", "3"]
        )
        assert result.exit_code == 1
        assert "gold" in result.output
        assert "Traceback" not in result.output
        assert cli_db.run(_vouchers) == []

    @pytest.mark.parametrize("count", ["0", "10001", "-4"])
    def test_count_out_of_range_is_refused(self, cli_db: CliDatabase, count: str) -> None:
        result = runner.invoke(
            app, ["admin", "vouchers", "create", "--plan", "basic", "--count", count]
        )
        assert result.exit_code == 1
        assert "--count" in result.output
        assert cli_db.run(_vouchers) == []

    def test_count_that_is_not_a_number_is_refused(self, cli_db: CliDatabase) -> None:
        result = runner.invoke(
            app, ["admin", "vouchers", "create", "--plan", "basic", "--count", "many"]
        )
        assert result.exit_code != 0
        assert "Traceback" not in result.output


class TestExport:
    def test_exports_csv_to_stdout_or_a_file(self, cli_db: CliDatabase, tmp_path: Path) -> None:
        made = runner.invoke(
            app, ["admin", "vouchers", "create", "--plan", "basic", "--count", "3"]
        )
        codes = made.stdout.split()
        result = runner.invoke(app, ["admin", "vouchers", "export"])
        assert result.exit_code == 0, result.output
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        assert {row["code"] for row in rows} == set(codes)
        assert {row["status"] for row in rows} == {"unused"}

        target = tmp_path / "out.csv"
        to_file = runner.invoke(
            app, ["admin", "vouchers", "export", "--plan", "basic", "--output", str(target)]
        )
        assert to_file.exit_code == 0, to_file.output
        assert len(list(csv.DictReader(target.open()))) == 3
