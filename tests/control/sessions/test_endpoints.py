"""A user's own sessions over the API, and nobody else's."""

from __future__ import annotations

from datetime import timedelta

import httpx

from kswifi.control.deps import AppContext
from tests.conftest import ApiUser, register_and_login
from tests.control.conftest import MakeSession


async def _user_id(client: httpx.AsyncClient, user: ApiUser) -> str:
    response = await client.get("/api/auth/me", headers=user.headers)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


class TestOwnSessions:
    async def test_lists_and_reads_own_session(
        self, client: httpx.AsyncClient, user: ApiUser, make_session: MakeSession
    ) -> None:
        session = await make_session(await _user_id(client, user), "premium")
        listing = await client.get("/api/sessions", headers=user.headers)
        assert listing.status_code == 200
        assert [s["id"] for s in listing.json()["sessions"]] == [session.id]
        one = await client.get(f"/api/sessions/{session.id}", headers=user.headers)
        body = one.json()
        assert body["status"] == "active"
        assert body["data_limit_bytes"] == 5 * 1024**3
        assert body["data_limit_mb"] == 5 * 1024
        assert body["used_bytes"] == 0
        assert body["remaining_bytes"] == 5 * 1024**3
        assert body["speed_mbps"] == 25
        assert body["usage_text"] == "0 GB of 5 GB used"
        assert body["expires_at"] is None

    async def test_someone_elses_session_is_404_like_a_missing_one(
        self, client: httpx.AsyncClient, user: ApiUser, make_session: MakeSession
    ) -> None:
        session = await make_session(await _user_id(client, user))
        other = await register_and_login(client)
        theirs = await client.get(f"/api/sessions/{session.id}", headers=other.headers)
        missing = await client.get("/api/sessions/" + "0" * 32, headers=other.headers)
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json() == missing.json()
        listing = await client.get("/api/sessions", headers=other.headers)
        assert listing.json()["sessions"] == []

    async def test_needs_authentication(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/sessions")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"


class TestUsageRules:
    async def test_usage_ends_session_exactly_at_the_limit(
        self, ctx: AppContext, make_session: MakeSession
    ) -> None:
        from kswifi.control.models import utcnow
        from kswifi.control.sessions import service

        session = await make_session(plan_code="basic")
        limit = session.data_limit_bytes
        async with ctx.db.transaction() as db:
            [after] = await service.record_usage_batch(
                db,
                ctx.events,
                deltas=[service.UsageDelta(session.id, limit // 2, limit // 2 - 1)],
                now=utcnow(),
            )
            assert after.status == "connected"  # its first bytes started its clock
        async with ctx.db.transaction() as db:
            [after] = await service.record_usage_batch(
                db, ctx.events, deltas=[service.UsageDelta(session.id, 0, 1)], now=utcnow()
            )
            assert after.status == "exhausted"
            assert after.used_bytes == limit

    async def test_events_reach_a_subscriber_after_commit(
        self, ctx: AppContext, make_session: MakeSession
    ) -> None:
        from kswifi.control.events import session_channel
        from kswifi.control.models import utcnow
        from kswifi.control.sessions import service

        session = await make_session(plan_code="basic")
        async with ctx.events.subscribe(session_channel(session.id)) as subscription:
            async with ctx.db.transaction() as db:
                await service.record_usage_batch(
                    db,
                    ctx.events,
                    deltas=[
                        service.UsageDelta(session.id, int(0.85 * session.data_limit_bytes), 0)
                    ],
                    now=utcnow(),
                )
                assert await subscription.get(0.05) is None  # nothing before commit
            usage = await subscription.get(1)
            warning = await subscription.get(1)
        assert usage is not None and usage["type"] == "usage"
        assert usage["used_bytes"] == int(0.85 * session.data_limit_bytes)
        assert warning is not None and warning["type"] == "warning" and warning["percent"] == 80


class TestLiveStateEvents:
    async def test_first_handshake_and_extension_reach_open_streams(
        self, ctx: AppContext, make_session: MakeSession
    ) -> None:
        from kswifi.control.events import session_channel
        from kswifi.control.models import utcnow
        from kswifi.control.sessions import service

        session = await make_session(plan_code="basic")
        async with ctx.db.transaction() as db:  # its clock started (first bytes)
            row = await service.get(db, session.id)
            row.activated_at, row.expires_at = utcnow(), utcnow() + timedelta(days=7)
        async with ctx.events.subscribe(session_channel(session.id)) as subscription:
            async with ctx.db.transaction() as db:
                await service.mark_connected(db, session.id, utcnow(), ctx.events)
            connected = await subscription.get(1)
            async with ctx.db.transaction() as db:
                row = await service.get(db, session.id)
                await service.extend(row, 3, utcnow(), db=db, bus=ctx.events)
            extended = await subscription.get(1)
        assert connected is not None and connected["status"] == "connected"
        assert extended is not None and extended["seconds_left"] >= 3 * 86_400 - 5
        assert extended["expires_at"] is not None
