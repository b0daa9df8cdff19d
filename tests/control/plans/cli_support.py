"""Running `kswifi admin …` commands in tests against a migrated SQLite file."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.config import get_settings
from kswifi.control.db import Database

T = TypeVar("T")


class CliDatabase:
    """The database the CLI under test uses, readable from the test."""

    def __init__(self, url: str) -> None:
        self.url = url

    def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async def runner() -> T:
            database = Database(self.url)
            try:
                async with database.transaction() as db:
                    return await work(db)
            finally:
                await database.dispose()

        return asyncio.run(runner())


def prepare_cli_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_template: Path
) -> CliDatabase:
    path = tmp_path / "cli.db"
    shutil.copy(sqlite_template, path)
    url = f"sqlite+aiosqlite:///{path}"
    monkeypatch.setenv("KSWIFI_DATABASE_URL", url)
    monkeypatch.setenv("KSWIFI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KSWIFI_SECRET_KEY", "cli-test-secret-0123456789abcdef")
    get_settings.cache_clear()
    return CliDatabase(url)
