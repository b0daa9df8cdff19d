"""Database engine and the transaction scope (a request or a job owns its transaction)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, cast

from sqlalchemy import ARRAY, String, bindparam, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.sql.elements import ColumnElement

AFTER_COMMIT = "kswifi_after_commit"


def id_list_text(ids: Iterable[str]) -> tuple[list[str], str]:
    """`ids` as ONE text parameter that PostgreSQL splits back (`string_to_array(:ids, ',')`):
    far cheaper to bind than an array, whose every element asyncpg checks and encodes. Ids are
    `new_id()` hex; a string with a comma or a NUL (or an empty one) is none of ours and matches
    no row, so it is left out: it can never split into other ids. The ids kept, and their text.
    """
    kept = list(ids)
    joined = ",".join(kept)
    if joined.count(",") != len(kept) - 1 or "\x00" in joined or "" in kept:
        kept = [value for value in kept if value and "," not in value and "\x00" not in value]
        joined = ",".join(kept)
    return kept, joined


def number_list_text(values: Iterable[int]) -> str:
    """Integers as one text parameter (`CAST(string_to_array(:p, ',') AS BIGINT[])`)."""
    return ",".join(map(str, values))


def after_commit(session: AsyncSession, callback: Callable[[], Awaitable[None]]) -> None:
    """Run `callback` once this transaction has committed (never if it rolls back).

    Events go out this way, so a listener that re-reads the database sees the change.
    """
    session.info.setdefault(AFTER_COMMIT, []).append(callback)


class Database:
    """One engine and session factory; SQLite runs every transaction as `BEGIN IMMEDIATE`."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 60}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_timeout=60)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        else:
            _ping_idle_connections(self.engine)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session whose work is committed on success and rolled back on any error."""
        async with self.sessionmaker() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                session.info.pop(AFTER_COMMIT, None)
                await session.rollback()
                raise
            for callback in session.info.pop(AFTER_COMMIT, []):
                await callback()

    async def dispose(self) -> None:
        await self.engine.dispose()


# A pooled connection is checked before use once it has idled this long (the server may have
# restarted or dropped it meanwhile). Checking every checkout, as `pool_pre_ping` does, costs
# three round trips on asyncpg (BEGIN, a no-op, ROLLBACK) on every request, for a connection
# given back moments ago. One lost while in use is answered 503 + Retry-After (see app.py),
# and the pool then replaces every connection older than the loss.
IDLE_PING_SECONDS = 2.0


def _ping_idle_connections(engine: AsyncEngine) -> None:
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
            return
        try:
            dbapi_connection.ping()
        except Exception as exc:
            # The pool discards this connection and checks out another (a new one).
            raise DisconnectionError("idle connection lost") from exc


def _configure_sqlite(engine: AsyncEngine) -> None:
    # SQLite has one writer: taking the write lock when a transaction begins (instead of
    # upgrading a read lock later) turns would-be deadlocks into short, ordered waits.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


# --- query helpers shared by the repositories ---------------------------------------------------

INSERT_CHUNK = 1000
"""Rows per multi-row INSERT."""
IN_CHUNK = 5000
"""Values per `IN (...)` list (SQLite binds at most 32,766 parameters per statement)."""


def chunks(values: Iterable[str]) -> list[list[str]]:
    """Distinct values, sorted, in slices that fit in one `IN (...)`."""
    ordered = sorted(set(values))
    return [ordered[start : start + IN_CHUNK] for start in range(0, len(ordered), IN_CHUNK)]


def is_postgresql(db: AsyncSession) -> bool:
    return db.get_bind().dialect.name == "postgresql"


def one_of(db: AsyncSession, column: Any, values: list[str]) -> ColumnElement[bool]:
    """`column IN (values)`. On PostgreSQL `column IN (SELECT unnest(:array))`: one bound array,
    so the statement is compiled and planned once, not once per list length; and a semi-join
    that uses the column's index (`= ANY(:array)` of a generic plan compares every row of the
    table with every value)."""
    if is_postgresql(db):
        # Its text cannot hold a NUL: such a value (from a gateway) matches no row, and would
        # not even bind.
        values = [value for value in values if "\x00" not in value]
        array = bindparam(None, values, type_=ARRAY(String), unique=True)
        return cast(ColumnElement[bool], column.in_(select(func.unnest(array))))
    return cast(ColumnElement[bool], column.in_(values))
