"""The migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from kswifi.control import migrate
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


def test_devices_become_profiles_that_outlive_their_sessions(tmp_path: Path) -> None:
    """Revision 0006 on a database with today's devices: those of live sessions keep drawing
    from them (phones set up before the upgrade keep working), an installed device of an ended
    session stays installed, in the garden; removed ones stay removed."""
    path = tmp_path / "old.db"
    url = f"sqlite+aiosqlite:///{path}"
    migrate.upgrade(url, "0005")
    now = "2026-12-01 10:00:00.000000"
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO users (id, email, password_hash, is_admin, is_disabled, created_at)"
            " VALUES ('u1', 'a@example.com', 'x', 0, 0, ?)",
            (now,),
        )
        db.execute(
            "INSERT INTO gateways (id, name, region_code, endpoint, listen_port, token_hash,"
            " public_key, private_key_encrypted, ipv4_pool, ipv6_pool, capacity,"
            " next_host_index, revision, is_enabled, created_at, is_online, peer_count, rx_bps,"
            " tx_bps, applied_revision, last_usage_sequence) VALUES ('g1', 'gw', 'eu-west',"
            " 'gw:51820', 51820, 'h', 'k', 'e', '100.64.0.0/16', 'fd00::/64', 10, 5, 1, 1, ?,"
            " 0, 0, 0, 0, 0, 0)",
            (now,),
        )
        for sid, status in (("live", "connected"), ("over", "exhausted")):
            db.execute(
                "INSERT INTO purchases (id, user_id, plan_id, provider, status, amount_cents,"
                " currency, created_at) VALUES (?, 'u1', 'planbasic' || substr('0000000000000"
                "0000000000000000000', 1, 23), 'dev', 'paid', 0, 'USD', ?)",
                (f"p-{sid}", now),
            )
            db.execute(
                "INSERT INTO data_sessions (id, user_id, plan_id, purchase_id, plan_code,"
                " plan_name, status, data_limit_bytes, speed_mbps, validity_seconds,"
                " max_devices, used_bytes, rx_bytes, tx_bytes, created_at, activation_deadline,"
                " warned_percent) VALUES (?, 'u1', 'planbasic' || substr('00000000000000000000"
                "000000000000', 1, 23), ?, 'basic', 'Basic', ?, 1000, 10, 86400, 1, 0, 0, 0,"
                " ?, ?, 0)",
                (sid, f"p-{sid}", status, now, now),
            )
        for device, sid, status, host in (
            ("d-live", "live", "active", 2),
            ("d-over", "over", "active", 3),
            ("d-gone", "over", "removed", 4),
        ):
            db.execute(
                "INSERT INTO devices (id, session_id, user_id, gateway_id, device_name, status,"
                " public_key, preshared_key_encrypted, host_index, ipv4, ipv6, created_at,"
                " rotated_at) VALUES (?, ?, 'u1', 'g1', ?, ?, ?, 'x', ?, ?, ?, ?, ?)",
                (device, sid, device, status, f"key-{device}", host, f"100.64.0.{host}",
                 f"fd00::{host}", now, now),
            )  # fmt: skip
    migrate.upgrade(url, "head")
    with sqlite3.connect(path) as db:
        rows = dict(db.execute("SELECT id, session_id FROM devices").fetchall())
        statuses = dict(db.execute("SELECT id, status FROM devices").fetchall())
        garden = db.execute("SELECT garden_rx_bytes, garden_tx_bytes FROM gateways").fetchone()
        installed = db.execute("SELECT installed_devices FROM gateways").fetchone()
    assert rows == {"d-live": "live", "d-over": None, "d-gone": "over"}
    assert statuses == {"d-live": "active", "d-over": "active", "d-gone": "removed"}
    assert garden == (0, 0)
    assert installed == (2,)  # revision 0007 counts the installed devices, not the removed one
