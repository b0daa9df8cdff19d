"""The migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from kswifi.control.models import Base


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_upgraded_database_matches_the_models(database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(_differences)
    finally:
        await engine.dispose()
    assert differences == []


async def test_lease_holds_of_existing_rows_start_at_zero(database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            columns = await connection.run_sync(
                lambda sync: {c["name"]: c for c in inspect(sync).get_columns("gateway_leases")}
            )
    finally:
        await engine.dispose()
    for name in ("held_bytes", "held_until_revision"):
        assert columns[name]["nullable"] is False
        assert "0" in str(columns[name]["default"])


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_tables_updated_by_usage_leave_room_on_each_page(database_url: str) -> None:
    """A PostgreSQL storage setting (SQLite has no fillfactor)."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT relname, reloptions FROM pg_class WHERE relname IN"
                    " ('data_sessions', 'gateway_leases', 'usage_rollups', 'users')"
                )
            )
            options = {name: reloptions for name, reloptions in rows}
    finally:
        await engine.dispose()
    assert options == {
        "data_sessions": ["fillfactor=70"],
        "gateway_leases": ["fillfactor=70"],
        "usage_rollups": ["fillfactor=70"],
        "users": None,
    }
