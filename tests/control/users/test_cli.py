"""`kswifi admin users create|list` against a migrated database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from kswifi.cli import app
from kswifi.control.config import get_settings
from kswifi.control.db import Database
from kswifi.control.models import User
from kswifi.control.security import verify_password
from tests.conftest import TEST_SECRET

runner = CliRunner()


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("KSWIFI_DATABASE_URL", database_url)
    monkeypatch.setenv("KSWIFI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KSWIFI_SECRET_KEY", TEST_SECRET)
    get_settings.cache_clear()
    yield database_url
    get_settings.cache_clear()


def stored_users(database_url: str) -> list[User]:
    async def read() -> list[User]:
        database = Database(database_url)
        try:
            async with database.transaction() as db:
                return list((await db.scalars(select(User).order_by(User.created_at))).all())
        finally:
            await database.dispose()

    return asyncio.run(read())


class TestCreate:
    def test_creates_an_admin_and_prints_id_and_email(self, cli_env: str) -> None:
        result = runner.invoke(
            app,
            [
                "admin",
                "users",
                "create",
                "--email",
                "Ops@Example.com",
                "--password",
                "s3cret-pass",
                "--admin",
            ],
        )
        assert result.exit_code == 0, result.output
        [user] = stored_users(cli_env)
        assert result.stdout.strip() == f"{user.id} ops@example.com"
        assert user.is_admin is True
        assert verify_password(user.password_hash, "s3cret-pass")

    def test_plain_user_by_default(self, cli_env: str) -> None:
        result = runner.invoke(
            app,
            ["admin", "users", "create", "--email", "u@example.com", "--password", "s3cret-pass"],
        )
        assert result.exit_code == 0, result.output
        assert stored_users(cli_env)[0].is_admin is False

    def test_password_is_prompted_when_not_given(self, cli_env: str) -> None:
        result = runner.invoke(
            app,
            ["admin", "users", "create", "--email", "p@example.com"],
            input="prompted-pass\nprompted-pass\n",
        )
        assert result.exit_code == 0, result.output
        assert verify_password(stored_users(cli_env)[0].password_hash, "prompted-pass")

    def test_duplicate_email_is_a_clear_error(self, cli_env: str) -> None:
        args = [
            "admin",
            "users",
            "create",
            "--email",
            "dup@example.com",
            "--password",
            "s3cret-pass",
        ]
        assert runner.invoke(app, args).exit_code == 0
        args[4] = "DUP@example.com"
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        assert "already exists" in result.stderr
        assert "Traceback" not in result.output
        assert len(stored_users(cli_env)) == 1

    @pytest.mark.parametrize(
        ("email", "password", "word"),
        [
            ("not-an-email", "s3cret-pass", "That email address is not valid"),
            ("ok@example.com", "short", "Use a password of 8 to 256 characters."),
        ],
    )
    def test_bad_input_is_a_clear_error(
        self, cli_env: str, email: str, password: str, word: str
    ) -> None:
        result = runner.invoke(
            app, ["admin", "users", "create", "--email", email, "--password", password]
        )
        assert result.exit_code == 1
        assert result.stderr.startswith(f"error: {word}")  # in words, one line
        assert stored_users(cli_env) == []


class TestList:
    def test_lists_users_oldest_first(self, cli_env: str) -> None:
        for email, extra in [("first@example.com", ["--admin"]), ("second@example.com", [])]:
            args = ["admin", "users", "create", "--email", email, "--password", "s3cret-pass"]
            assert runner.invoke(app, args + extra).exit_code == 0
        result = runner.invoke(app, ["admin", "users", "list"])
        assert result.exit_code == 0, result.output
        lines = [line.split("\t") for line in result.stdout.splitlines()]
        assert [(line[1], line[2], line[3]) for line in lines] == [
            ("first@example.com", "admin", "active"),
            ("second@example.com", "user", "active"),
        ]
        assert [line[0] for line in lines] == [user.id for user in stored_users(cli_env)]

    def test_empty_database(self, cli_env: str) -> None:
        result = runner.invoke(app, ["admin", "users", "list"])
        assert result.exit_code == 0
        assert result.stdout == ""
        assert "no users" in result.stderr


def test_unmigrated_database_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KSWIFI_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    monkeypatch.setenv("KSWIFI_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["admin", "users", "list"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "kswifi db upgrade" in result.stderr
