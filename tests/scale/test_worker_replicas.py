"""Periodic jobs run by two workers (two replicas' worth of engines) on one PostgreSQL database:
every session expires once, every silent gateway goes offline once, every device is told once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from kswifi.control.config import Settings
from kswifi.control.db import Database
from kswifi.control.deps import AppContext
from kswifi.control.events import InProcessEventBus
from kswifi.control.gateways import addresses as gateway_addresses
from kswifi.control.gateways import service as gateways
from kswifi.control.models import DataSession, Device, Gateway, Plan, Purchase, User, utcnow
from kswifi.control.security import SecretBox
from kswifi.control.sessions import service as sessions
from kswifi.control.worker import Worker
from tests.scale.replicas import SECRET, ScaleDatabase, scale_database

pytestmark = pytest.mark.postgres
SESSIONS = 300


class RecordingBus(InProcessEventBus):
    """Every publish of one replica, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        self.published.append((channel, payload))
        await super().publish(channel, payload)


@pytest.fixture(scope="module")
def database() -> Iterator[ScaleDatabase]:
    with scale_database("kswifi_workers") as created:
        yield created


@pytest.fixture
async def replicas(database: ScaleDatabase, tmp_path: Any) -> AsyncIterator[list[AppContext]]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database.url,
        secret_key=SECRET,  # type: ignore[arg-type]
    )
    contexts = [
        AppContext(
            settings=settings,
            db=Database(database.url),
            secrets=SecretBox(SECRET),
            events=RecordingBus(),
        )
        for _ in range(2)
    ]
    async with contexts[0].db.transaction() as db:  # each test starts from the seed
        await db.execute(update(Gateway).values(is_enabled=False, is_online=False))
    try:
        yield contexts
    finally:
        for ctx in contexts:
            await ctx.db.dispose()


def _published(contexts: list[AppContext], kind: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for ctx in contexts:
        assert isinstance(ctx.events, RecordingBus)
        for channel, payload in ctx.events.published:
            if payload.get("type") == kind:
                counts[channel] += 1
    return counts


async def _sessions(ctx: AppContext, count: int) -> list[str]:
    """`count` sessions whose activation deadline has passed (due for expiry)."""
    async with ctx.db.transaction() as db:
        user = User(email=f"workers-{utcnow().timestamp()}@example.com", password_hash="x")
        db.add(user)
        plan = await db.scalar(select(Plan).where(Plan.code == "basic"))
        assert plan is not None
        await db.flush()
        ids = []
        for _ in range(count):
            purchase = Purchase(
                user_id=user.id,
                plan_id=plan.id,
                provider="dev",
                status="paid",
                amount_cents=0,
                currency="USD",
            )
            db.add(purchase)
            await db.flush()
            session = (
                await sessions.create_for_purchase(
                    db, user_id=user.id, purchase_id=purchase.id, plan=plan, activation_days=30
                )
            ).session
            session.activation_deadline = utcnow() - timedelta(seconds=1)
            ids.append(session.id)
        return ids


async def _run_until_idle(workers: list[Worker], job: str) -> list[int]:
    """Both workers run the job at the same moment, again and again, until neither finds work."""
    totals = [0] * len(workers)
    while True:
        done = await asyncio.gather(*(getattr(worker, job)(utcnow()) for worker in workers))
        for index, count in enumerate(done):
            totals[index] += count
        if not any(done):
            return totals


async def test_two_workers_expire_each_session_exactly_once(replicas: list[AppContext]) -> None:
    ids = await _sessions(replicas[0], SESSIONS)
    workers = [Worker(ctx) for ctx in replicas]
    totals = await _run_until_idle(workers, "expire_sessions")
    assert sum(totals) == SESSIONS
    expired = _published(replicas, "expired")
    assert set(expired) == {f"session.{session_id}" for session_id in ids}
    assert set(expired.values()) == {1}
    async with replicas[1].db.transaction() as db:
        states = dict(
            (
                await db.execute(
                    select(DataSession.status, func.count())
                    .where(DataSession.id.in_(ids))
                    .group_by(DataSession.status)
                )
            ).all()
        )
    assert states == {"expired": SESSIONS}


async def test_two_workers_take_a_silent_gateway_offline_once_and_tell_each_session_once(
    replicas: list[AppContext],
) -> None:
    ctx = replicas[0]
    async with ctx.db.transaction() as db:
        gateway, _token = await gateways.register(
            db,
            ctx.secrets,
            ctx.settings,
            name=f"silent-{utcnow().timestamp()}",
            region_code="eu-west",
            endpoint="203.0.113.50:51820",
        )
        gateway_id = gateway.id
    ids = await _sessions(ctx, 20)
    async with ctx.db.transaction() as db:
        for number, session_id in enumerate(ids):
            row = await db.get(DataSession, session_id)
            assert row is not None
            row.activation_deadline = utcnow() + timedelta(days=1)  # live, not due
            host, ipv4, ipv6 = await gateway_addresses.allocate_host(
                db, gateway, ctx.settings, utcnow()
            )
            db.add(
                Device(
                    session_id=session_id,
                    user_id=row.user_id,
                    gateway_id=gateway_id,
                    public_key=f"{number:043d}=",
                    preshared_key_encrypted="x",
                    host_index=host,
                    ipv4=ipv4,
                    ipv6=ipv6,
                )
            )
        await db.execute(
            update(Gateway)
            .where(Gateway.id == gateway_id)
            .values(is_online=True, last_heartbeat_at=utcnow() - timedelta(minutes=10))
        )
    totals = await _run_until_idle([Worker(c) for c in replicas], "mark_offline_gateways")
    assert sum(totals) == 1
    told = _published(replicas, "gateway_offline")
    assert told == Counter({f"session.{session_id}": 1 for session_id in ids})
    async with ctx.db.transaction() as db:
        row = await db.get(Gateway, gateway_id)
        assert row is not None and row.is_online is False
