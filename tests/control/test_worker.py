"""The worker's periodic jobs against a real database."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from kswifi.control.deps import AppContext
from kswifi.control.events import gateway_channel, session_channel
from kswifi.control.gateways import service as gateways
from kswifi.control.models import DesiredChange, Device, Gateway, utcnow
from kswifi.control.profiles import service as profiles
from kswifi.control.sessions import service as sessions
from kswifi.control.worker import Worker
from tests.control.conftest import MakeSession


async def _register_gateway(ctx: AppContext) -> Gateway:
    async with ctx.db.transaction() as db:
        gateway, _token = await gateways.register(
            db,
            ctx.secrets,
            ctx.settings,
            name="gw-worker",
            region_code="eu-west",
            endpoint="203.0.113.1:51820",
        )
        return gateway


class TestExpiry:
    async def test_expired_session_ends_announces_and_leaves_its_gateway(
        self, ctx: AppContext, make_session: MakeSession
    ) -> None:
        gateway = await _register_gateway(ctx)
        session = await make_session(plan_code="basic")
        async with ctx.db.transaction() as db:
            await profiles.generate_profile(
                db,
                secrets=ctx.secrets,
                settings=ctx.settings,
                bus=ctx.events,
                user_id=session.user_id,
                session_id=session.id,
                region="eu-west",
                device_name="phone",
                now=utcnow(),
            )
        async with ctx.db.transaction() as db:
            row = await sessions.get(db, session.id)
            row.expires_at = utcnow() - timedelta(seconds=1)
            row.activated_at = row.activated_at or utcnow() - timedelta(days=1)
            before = (await db.get(Gateway, gateway.id)).revision  # type: ignore[union-attr]
        worker = Worker(ctx)
        async with (
            ctx.events.subscribe(session_channel(session.id)) as events,
            ctx.events.subscribe(gateway_channel(gateway.id)) as gateway_events,
        ):
            done = await worker.run_due(force=True)
            expired = await events.get(1.0)
            bumped = await gateway_events.get(1.0)
        assert done["expire_sessions"] == 1
        assert expired is not None and expired["type"] == "expired"
        async with ctx.db.transaction() as db:
            row = await sessions.get(db, session.id)
            assert row.status == "expired" and row.end_reason == "time_up"
            devices = list(await db.scalars(select(Device).where(Device.user_id == row.user_id)))
            after = (await db.get(Gateway, gateway.id)).revision  # type: ignore[union-attr]
        assert bumped is not None
        assert after > before
        async with ctx.db.transaction() as db:  # recorded as the owner's change alone
            recorded = await db.scalars(
                select(DesiredChange.user_id).where(
                    DesiredChange.gateway_id == gateway.id, DesiredChange.revision == after
                )
            )
            assert set(recorded) == {session.user_id}
        # The profile outlives the session: still installed, drawing from nothing (garden).
        assert len(devices) == 1 and devices[0].status == "active"
        assert devices[0].session_id is None
        assert (await worker.run_due(force=True))["expire_sessions"] == 0

    async def test_unactivated_session_expires_at_its_activation_deadline(
        self, ctx: AppContext, make_session: MakeSession
    ) -> None:
        session = await make_session(plan_code="basic")
        async with ctx.db.transaction() as db:
            row = await sessions.get(db, session.id)
            row.activation_deadline = utcnow() - timedelta(seconds=1)
        assert (await Worker(ctx).run_due(force=True))["expire_sessions"] == 1

    async def test_live_session_is_left_alone(
        self, ctx: AppContext, make_session: MakeSession
    ) -> None:
        session = await make_session(plan_code="basic")
        await Worker(ctx).run_due(force=True)
        async with ctx.db.transaction() as db:
            assert (await sessions.get(db, session.id)).status == "active"


class TestOffline:
    async def test_silent_gateway_goes_offline(self, ctx: AppContext) -> None:
        gateway = await _register_gateway(ctx)
        async with ctx.db.transaction() as db:
            row = await db.get(Gateway, gateway.id)
            assert row is not None
            row.is_online = True
            row.last_heartbeat_at = utcnow() - timedelta(hours=1)
        assert (await Worker(ctx).run_due(force=True))["mark_offline_gateways"] == 1
        async with ctx.db.transaction() as db:
            row = await db.get(Gateway, gateway.id)
            assert row is not None and row.is_online is False
