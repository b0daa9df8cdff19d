"""The rules of a person's sessions and devices, on SQLite and PostgreSQL: sessions are
consumed one at a time, oldest purchase first (the others `queued`); a session's clock starts
at its first byte; devices beyond the current session's limit wait; installed devices hand
over by themselves; concurrent purchases and exhaustion leave exactly one current session."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import httpx
from sqlalchemy import select

from kswifi.control.deps import AppContext
from kswifi.control.models import DataSession, Device, utcnow
from kswifi.control.sessions import service as sessions
from kswifi.control.worker import Worker
from tests.control.profiles.conftest import MakeSession, Owner, RegisteredGateway, generate


async def _sessions(ctx: AppContext, user_id: str) -> list[DataSession]:
    async with ctx.db.transaction() as db:
        rows = await db.scalars(
            select(DataSession)
            .where(DataSession.user_id == user_id)
            .order_by(DataSession.created_at, DataSession.id)
        )
        return list(rows)


async def _devices(ctx: AppContext, user_id: str) -> dict[str, str | None]:
    async with ctx.db.transaction() as db:
        rows = await db.scalars(select(Device).where(Device.user_id == user_id))
        return {device.device_name: device.session_id for device in rows}


async def _use_up(ctx: AppContext, session_id: str) -> None:
    """A gateway reports the session's whole budget served (it ends, exhausted)."""
    async with ctx.db.transaction() as db:
        session = await sessions.get(db, session_id)
        used = session.used_bytes
        await sessions.record_usage_batch(
            db,
            ctx.events,
            deltas=[sessions.UsageDelta(session_id, 0, session.data_limit_bytes - used)],
            now=utcnow(),
        )


async def test_sessions_are_consumed_one_at_a_time_oldest_first(
    ctx: AppContext, owner: Owner, make_session: MakeSession
) -> None:
    first = await make_session(owner.id, "basic")
    second = await make_session(owner.id, "premium")
    third = await make_session(owner.id, "ultra")
    assert [s.status for s in (first, second, third)] == ["active", "queued", "queued"]
    await _use_up(ctx, first.id)
    assert [s.status for s in await _sessions(ctx, owner.id)] == ["exhausted", "active", "queued"]
    async with ctx.db.transaction() as db:
        row = await sessions.get(db, second.id)
        await sessions.end(db, ctx.events, row, "revoked", "operator", utcnow())
    assert [s.status for s in await _sessions(ctx, owner.id)] == ["exhausted", "revoked", "active"]


async def test_the_clock_starts_at_the_first_byte_and_a_queued_one_when_it_is_current(
    ctx: AppContext, owner: Owner, make_session: MakeSession
) -> None:
    first = await make_session(owner.id, "basic")
    queued = await make_session(owner.id, "premium")
    assert first.expires_at is None and first.activated_at is None
    window = queued.activation_deadline - queued.created_at
    before = utcnow()
    async with ctx.db.transaction() as db:
        await sessions.record_usage_batch(
            db, ctx.events, deltas=[sessions.UsageDelta(first.id, 10, 0)], now=before
        )
    started, waiting = await _sessions(ctx, owner.id)
    assert started.status == "connected" and started.activated_at == before
    assert started.expires_at == before + timedelta(seconds=started.validity_seconds)
    assert waiting.status == "queued" and waiting.expires_at is None
    await _use_up(ctx, first.id)
    _, current = await _sessions(ctx, owner.id)
    # Current now, still not started: its activation window counts from its turn.
    assert current.status == "active" and current.expires_at is None
    assert current.activation_deadline >= utcnow() + window - timedelta(seconds=5)
    out = sessions.to_out(current, utcnow())
    assert out.expires_at is None and out.starts == "When your phone first connects"


async def test_device_limits_follow_the_current_session(
    client: httpx.AsyncClient,
    ctx: AppContext,
    owner: Owner,
    make_session: MakeSession,
    gateway: RegisteredGateway,
) -> None:
    one = await make_session(owner.id, "premium")  # one device at once
    three = await make_session(owner.id, "ultra")  # three at once, queued
    states = []
    for name in ("phone", "tablet", "laptop"):
        response = await generate(client, owner, one.id, device_name=name)
        assert response.status_code == 200, response.text
        states.append((response.json()["state"], response.json()["session_id"]))
    # The waiting ones name the session they will draw from once there is room.
    assert states == [("active", one.id), ("waiting", one.id), ("waiting", one.id)]
    assert await _devices(ctx, owner.id) == {"phone": one.id, "tablet": None, "laptop": None}
    await _use_up(ctx, one.id)
    assert await _devices(ctx, owner.id) == {
        "phone": three.id,
        "tablet": three.id,
        "laptop": three.id,
    }
    await _use_up(ctx, three.id)
    assert await _devices(ctx, owner.id) == {"phone": None, "tablet": None, "laptop": None}
    listed = (await client.get("/api/connect/profiles", headers=owner.headers)).json()
    assert {p["state"] for p in listed["profiles"]} == {"garden"}
    # Buying again: every device draws from the new session at once, same keys.
    fresh = await make_session(owner.id, "ultra")
    assert fresh.status == "active"
    assert set((await _devices(ctx, owner.id)).values()) == {fresh.id}


async def test_concurrent_purchases_give_one_current_session(
    ctx: AppContext, owner: Owner, make_session: MakeSession
) -> None:
    bought = await asyncio.gather(*(make_session(owner.id, "basic") for _ in range(8)))
    assert len(bought) == 8
    statuses = Counter(s.status for s in await _sessions(ctx, owner.id))
    assert statuses == {"active": 1, "queued": 7}


async def test_exhaustion_racing_a_purchase_hands_over_to_exactly_one_session(
    client: httpx.AsyncClient,
    ctx: AppContext,
    owner: Owner,
    make_session: MakeSession,
    gateway: RegisteredGateway,
) -> None:
    current = await make_session(owner.id, "ultra")
    for name in ("phone", "tablet"):
        assert (await generate(client, owner, current.id, device_name=name)).status_code == 200
    _, bought = await asyncio.gather(_use_up(ctx, current.id), make_session(owner.id, "ultra"))
    # Whichever came first, the worker's pass finishes any hand-over intake left to it.
    await Worker(ctx).hand_over_devices(utcnow())
    rows = await _sessions(ctx, owner.id)
    assert [s.status for s in rows] == ["exhausted", "active"]
    assert set((await _devices(ctx, owner.id)).values()) == {bought.id}
    assert rows[0].used_bytes == rows[0].data_limit_bytes  # not a byte beyond
