"""What every operator command shares: settings, a transaction, and clean failure."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import typer
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.config import Settings, get_settings
from kswifi.control.db import Database
from kswifi.control.errors import KSWiFiError
from kswifi.control.security import SecretBox
from kswifi.logs import configure_logging

T = TypeVar("T")


def fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def run_in_transaction(work: Callable[[AsyncSession, SecretBox, Settings], Awaitable[T]]) -> T:
    """Run `work` in one committed transaction; operator mistakes end as one clear line."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)  # to stderr: stdout is output

    async def runner() -> T:
        database = Database(settings.resolved_database_url)
        try:
            secrets = SecretBox(settings.ensure_secret_key())
            async with database.transaction() as session:
                return await work(session, secrets, settings)
        finally:
            await database.dispose()

    try:
        return asyncio.run(runner())
    except KSWiFiError as exc:
        fail(exc.message)
    except (OperationalError, ProgrammingError) as exc:
        fail(
            f"database not ready ({type(exc.orig).__name__ if exc.orig else 'error'}); "
            "run `kswifi db upgrade` first and check KSWIFI_DATABASE_URL"
        )
