"""The connection pool on PostgreSQL: idle connections are checked before use, busy ones not."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from kswifi.control import db as db_module
from kswifi.control.app import is_connection_loss
from kswifi.control.db import Database
from tests.conftest import PG_DSN, PgDatabase

pytestmark = pytest.mark.postgres


async def _terminate_others(database: PgDatabase) -> int:
    connection = await asyncpg.connect(PG_DSN)
    try:
        rows = await connection.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            database.name,
        )
    finally:
        await connection.close()
    return len(rows)


async def _select_one(database: Database) -> int:
    async with database.transaction() as session:
        return int(await session.scalar(text("SELECT 1")) or 0)


@pytest.fixture
def pg(pg_database: PgDatabase) -> PgDatabase:
    return pg_database


async def test_an_idle_connection_lost_meanwhile_is_replaced_unseen(
    pg: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = Database(pg.url)
    try:
        assert await _select_one(database) == 1
        assert await _terminate_others(pg) >= 1  # the pooled connection's backend is gone
        monkeypatch.setattr(db_module, "IDLE_PING_SECONDS", 0.0)  # it has idled long enough
        assert await _select_one(database) == 1
    finally:
        await database.dispose()


async def test_a_connection_just_given_back_is_not_pinged(
    pg: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "IDLE_PING_SECONDS", 3600.0)
    database = Database(pg.url)
    try:
        assert await _select_one(database) == 1
        assert await _terminate_others(pg) >= 1
        # Not checked: the loss shows on first use, as a connection loss (503 + Retry-After)…
        with pytest.raises(DBAPIError) as raised:
            await _select_one(database)
        assert is_connection_loss(raised.value)
        # …and the pool replaces the connection for the next transaction.
        assert await _select_one(database) == 1
    finally:
        await database.dispose()
