"""The operator API: sessions (search, revoke, extend), users, daily report, audit log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select

from kswifi.control.deps import AppContext
from kswifi.control.events import session_channel
from kswifi.control.models import AuditEntry, DataSession
from tests.conftest import ApiUser, register_and_login
from tests.control.admin.conftest import buy_session


async def audit_actions(ctx: AppContext) -> list[tuple[str, str, str]]:
    async with ctx.db.transaction() as db:
        rows = await db.scalars(select(AuditEntry).order_by(AuditEntry.created_at))
        return [(row.actor, row.action, row.target) for row in rows]


class TestAdminOnly:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/api/admin/sessions"),
            ("POST", "/api/admin/sessions/x/revoke"),
            ("POST", "/api/admin/sessions/x/extend"),
            ("GET", "/api/admin/users"),
            ("POST", "/api/admin/users/x/disable"),
            ("GET", "/api/admin/reports/daily"),
            ("GET", "/api/admin/audit"),
        ],
    )
    async def test_refused_to_anonymous_and_plain_users(
        self, client: httpx.AsyncClient, user: ApiUser, method: str, path: str
    ) -> None:
        assert (await client.request(method, path)).status_code == 401
        response = await client.request(method, path, headers=user.headers, json={"days": 1})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"


class TestSessionSearch:
    async def test_by_email_id_prefix_and_status(
        self, client: httpx.AsyncClient, ctx: AppContext, operator: ApiUser, buyer: ApiUser
    ) -> None:
        first = await buy_session(client, ctx, buyer, "basic")
        second = await buy_session(client, ctx, buyer, "premium")
        other = await register_and_login(client, "someone@example.org")
        third = await buy_session(client, ctx, other, "ultra")

        everyone = await client.get("/api/admin/sessions", headers=operator.headers)
        assert everyone.status_code == 200
        body = everyone.json()
        assert body["total"] == 3
        assert body["sessions"][0]["id"] == third  # newest first
        assert body["sessions"][0]["user_email"] == "someone@example.org"
        assert body["sessions"][0]["usage_text"] == "0 GB of 20 GB used"

        by_email = await client.get(
            "/api/admin/sessions", params={"q": "BUYER@example"}, headers=operator.headers
        )
        assert {s["id"] for s in by_email.json()["sessions"]} == {first, second}
        by_prefix = await client.get(
            "/api/admin/sessions", params={"q": second[:8]}, headers=operator.headers
        )
        assert [s["id"] for s in by_prefix.json()["sessions"]] == [second]
        wildcard = await client.get(
            "/api/admin/sessions", params={"q": "%"}, headers=operator.headers
        )
        assert wildcard.json()["total"] == 0  # the user's % is literal, not "everything"
        revoked = await client.get(
            "/api/admin/sessions", params={"status": "revoked"}, headers=operator.headers
        )
        assert revoked.json() == {"sessions": [], "total": 0}

    async def test_paging_and_bad_status(
        self, client: httpx.AsyncClient, ctx: AppContext, operator: ApiUser, buyer: ApiUser
    ) -> None:
        for _ in range(3):
            await buy_session(client, ctx, buyer, "basic")
        page = await client.get(
            "/api/admin/sessions", params={"limit": 2, "offset": 2}, headers=operator.headers
        )
        assert page.json()["total"] == 3
        assert len(page.json()["sessions"]) == 1
        bad = await client.get(
            "/api/admin/sessions", params={"status": "deleted"}, headers=operator.headers
        )
        assert bad.status_code == 422


class TestRevoke:
    async def test_revoke_ends_the_session_and_is_audited(
        self, client: httpx.AsyncClient, ctx: AppContext, operator: ApiUser, buyer: ApiUser
    ) -> None:
        session_id = await buy_session(client, ctx, buyer)
        async with ctx.events.subscribe(session_channel(session_id)) as events:
            response = await client.post(
                f"/api/admin/sessions/{session_id}/revoke",
                json={"reason": "chargeback"},
                headers=operator.headers,
            )
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "revoked"
            event = await events.get(2)
        assert event is not None and event["type"] == "revoked"
        mine = await client.get(f"/api/sessions/{session_id}", headers=buyer.headers)
        assert mine.json()["status"] == "revoked"
        async with ctx.db.transaction() as db:
            session = await db.get(DataSession, session_id)
            assert session is not None
            assert session.end_reason == "operator"
            entry = await db.scalar(select(AuditEntry).where(AuditEntry.action == "session.revoke"))
            assert entry is not None
            assert entry.actor == operator.email
            assert entry.target == f"session:{session_id}"
            assert "chargeback" in entry.detail and "buyer@example.com" in entry.detail

    async def test_revoking_twice_is_a_conflict_and_audits_once(
        self, client: httpx.AsyncClient, ctx: AppContext, operator: ApiUser, buyer: ApiUser
    ) -> None:
        session_id = await buy_session(client, ctx, buyer)
        path = f"/api/admin/sessions/{session_id}/revoke"
        assert (await client.post(path, headers=operator.headers)).status_code == 200
        again = await client.post(path, headers=operator.headers)
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "session_already_ended"
        revokes = [a for a in await audit_actions(ctx) if a[1] == "session.revoke"]
        assert len(revokes) == 1

    async def test_unknown_session(self, client: httpx.AsyncClient, operator: ApiUser) -> None:
        response = await client.post("/api/admin/sessions/nope/revoke", headers=operator.headers)
        assert response.status_code == 404


class TestExtend:
    async def test_extend_adds_days_and_is_audited(
        self, client: httpx.AsyncClient, ctx: AppContext, operator: ApiUser, buyer: ApiUser
    ) -> None:
        session_id = await buy_session(client, ctx, buyer)
        started = datetime.now(UTC) - timedelta(days=1)
        async with ctx.db.transaction() as db:
            session = await db.get(DataSession, session_id)
            assert session is not None
            session.activated_at, session.expires_at = started, started + timedelta(days=30)
        response = await client.post(
            f"/api/admin/sessions/{session_id}/extend", json={"days": 7}, headers=operator.headers
        )
        assert response.status_code == 200, response.text
        expires = datetime.fromisoformat(response.json()["expires_at"])
        assert expires == started + timedelta(days=37)
        assert "session.extend" in {a[1] for a in await audit_actions(ctx)}

    async def test_extending_a_session_not_started_gives_more_time_to_start(
        self, client: httpx.AsyncClient, ctx: AppContext, operator: ApiUser, buyer: ApiUser
    ) -> None:
        session_id = await buy_session(client, ctx, buyer)
        async with ctx.db.transaction() as db:
            session = await db.get(DataSession, session_id)
            assert session is not None
            deadline = session.activation_deadline
        response = await client.post(
            f"/api/admin/sessions/{session_id}/extend", json={"days": 7}, headers=operator.headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["expires_at"] is None  # its clock starts at first use
        async with ctx.db.transaction() as db:
            session = await db.get(DataSession, session_id)
            assert session is not None
            assert session.activation_deadline == deadline + timedelta(days=7)

    async def test_expired_session_comes_back(
        self, client: httpx.AsyncClient, ctx: AppContext, operator: ApiUser, buyer: ApiUser
    ) -> None:
        session_id = await buy_session(client, ctx, buyer)
        async with ctx.db.transaction() as db:
            session = await db.get(DataSession, session_id)
            assert session is not None
            session.status = "expired"
            session.expires_at = datetime.now(UTC) - timedelta(days=1)
        response = await client.post(
            f"/api/admin/sessions/{session_id}/extend", json={"days": 2}, headers=operator.headers
        )
        assert response.json()["status"] == "active"

    async def test_bad_days_and_ended_sessions(
        self, client: httpx.AsyncClient, ctx: AppContext, operator: ApiUser, buyer: ApiUser
    ) -> None:
        session_id = await buy_session(client, ctx, buyer)
        path = f"/api/admin/sessions/{session_id}/extend"
        for body in ({"days": 0}, {"days": 366}, {"days": "x"}, {}, {"days": 1, "extra": 1}):
            assert (await client.post(path, json=body, headers=operator.headers)).status_code == 422
        await client.post(f"/api/admin/sessions/{session_id}/revoke", headers=operator.headers)
        refused = await client.post(path, json={"days": 1}, headers=operator.headers)
        assert refused.status_code == 409
        assert [a[1] for a in await audit_actions(ctx)].count("session.extend") == 0


class TestUsers:
    async def test_list_with_session_counts(
        self, client: httpx.AsyncClient, ctx: AppContext, operator: ApiUser, buyer: ApiUser
    ) -> None:
        session_id = await buy_session(client, ctx, buyer)
        await buy_session(client, ctx, buyer)
        await client.post(f"/api/admin/sessions/{session_id}/revoke", headers=operator.headers)
        found = await client.get(
            "/api/admin/users", params={"q": "buyer"}, headers=operator.headers
        )
        assert found.status_code == 200
        [row] = found.json()["users"]
        assert row["email"] == "buyer@example.com"
        assert (row["session_count"], row["live_session_count"]) == (2, 1)
        everyone = await client.get("/api/admin/users", headers=operator.headers)
        assert everyone.json()["total"] == 2

    async def test_disable_and_enable(
        self, client: httpx.AsyncClient, ctx: AppContext, operator: ApiUser, buyer: ApiUser
    ) -> None:
        listed = await client.get(
            "/api/admin/users", params={"q": "buyer"}, headers=operator.headers
        )
        user_id = listed.json()["users"][0]["id"]
        disabled = await client.post(
            f"/api/admin/users/{user_id}/disable", headers=operator.headers
        )
        assert disabled.json()["is_disabled"] is True
        assert (await client.get("/api/auth/me", headers=buyer.headers)).status_code == 401
        enabled = await client.post(f"/api/admin/users/{user_id}/enable", headers=operator.headers)
        assert enabled.json()["is_disabled"] is False
        actions = [a[1] for a in await audit_actions(ctx)]
        assert actions.count("user.disable") == actions.count("user.enable") == 1

    async def test_cannot_disable_yourself(
        self, client: httpx.AsyncClient, operator: ApiUser
    ) -> None:
        me = await client.get("/api/auth/me", headers=operator.headers)
        response = await client.post(
            f"/api/admin/users/{me.json()['id']}/disable", headers=operator.headers
        )
        assert response.status_code == 409


class TestDailyReport:
    async def test_sales_and_data_per_day(
        self, client: httpx.AsyncClient, ctx: AppContext, operator: ApiUser, buyer: ApiUser
    ) -> None:
        from kswifi.control.models import UsageRollup

        await buy_session(client, ctx, buyer, "basic")
        session_id = await buy_session(client, ctx, buyer, "premium")
        now = datetime.now(UTC)
        yesterday = now - timedelta(days=1)
        async with ctx.db.transaction() as db:
            db.add(
                UsageRollup(
                    session_id=session_id,
                    bucket_start=now.replace(second=0, microsecond=0),
                    rx_bytes=100,
                    tx_bytes=50,
                )
            )
            db.add(
                UsageRollup(
                    session_id=session_id,
                    bucket_start=yesterday.replace(second=0, microsecond=0),
                    rx_bytes=7,
                    tx_bytes=0,
                )
            )
        response = await client.get(
            "/api/admin/reports/daily", params={"days": 3}, headers=operator.headers
        )
        assert response.status_code == 200
        report = response.json()
        assert [day["day"] for day in report["days"]] == [
            (now - timedelta(days=n)).date().isoformat() for n in range(3)
        ]
        today = report["days"][0]
        assert today["sales"] == 2
        assert today["revenue"] == [{"currency": "USD", "amount_cents": 499 + 1499}]
        assert today["data_bytes"] == 150
        assert report["days"][1]["data_bytes"] == 7
        assert report["days"][2] == {
            "day": (now - timedelta(days=2)).date().isoformat(),
            "sales": 0,
            "revenue": [],
            "data_bytes": 0,
        }
        assert report["total_data_bytes"] == 157
        assert report["total_sales"] == 2
        bad = await client.get(
            "/api/admin/reports/daily", params={"days": 0}, headers=operator.headers
        )
        assert bad.status_code == 422


class TestAuditLog:
    async def test_lists_every_operator_action_newest_first(
        self, client: httpx.AsyncClient, ctx: AppContext, operator: ApiUser, buyer: ApiUser
    ) -> None:
        session_id = await buy_session(client, ctx, buyer)
        await client.post(
            f"/api/admin/sessions/{session_id}/extend", json={"days": 1}, headers=operator.headers
        )
        await client.post(f"/api/admin/sessions/{session_id}/revoke", headers=operator.headers)
        log = await client.get("/api/admin/audit", headers=operator.headers)
        assert log.status_code == 200
        entries = log.json()["entries"]
        mine = [e for e in entries if e["actor"] == operator.email]
        assert [e["action"] for e in mine][:2] == ["session.revoke", "session.extend"]
        assert all(e["created_at"] for e in mine)
        voucher = await client.get(
            "/api/admin/audit", params={"action": "voucher"}, headers=operator.headers
        )
        assert {e["action"] for e in voucher.json()["entries"]} == {"voucher.create"}
        by_actor = await client.get(
            "/api/admin/audit", params={"actor": operator.email.upper()}, headers=operator.headers
        )
        assert by_actor.json()["total"] == 2
