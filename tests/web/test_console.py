"""The operator console: admin only, every page renders, every action works without JS and
lands in the audit log."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from kswifi.control.deps import AppContext
from kswifi.control.models import AuditEntry, DataSession, Plan
from kswifi.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION
from tests.web.conftest import (
    add_gateway,
    buy_with_voucher,
    csrf_from,
    make_admin,
    make_vouchers,
    post_form,
    web_login,
    web_signup,
)
from tests.web.test_vocabulary import assert_accessible_forms

CONSOLE_PAGES = [
    "/admin",
    "/admin/sessions",
    "/admin/users",
    "/admin/plans",
    "/admin/vouchers",
    "/admin/reports",
    "/admin/audit",
    "/admin/mail",
    "/admin/webhooks",
]


@pytest.fixture
async def operator_client(app: FastAPI, ctx: AppContext) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    client = httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver",
        headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION)},  # it also posts a gateway heartbeat
    )
    await web_login(client, await make_admin(ctx, "ops@example.com"))
    return client


async def audit(ctx: AppContext, action: str) -> list[AuditEntry]:
    async with ctx.db.transaction() as db:
        return list(await db.scalars(select(AuditEntry).where(AuditEntry.action == action)))


class TestAccess:
    @pytest.mark.parametrize("path", CONSOLE_PAGES)
    async def test_anonymous_is_sent_to_log_in(self, client: httpx.AsyncClient, path: str) -> None:
        response = await client.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?next=/admin")

    @pytest.mark.parametrize("path", CONSOLE_PAGES)
    async def test_customers_get_404(self, client: httpx.AsyncClient, path: str) -> None:
        await web_signup(client)
        response = await client.get(path)
        assert response.status_code == 404
        assert "Page not found" in response.text
        assert "Console" not in response.text  # the nav does not advertise it either

    async def test_customer_cannot_post_actions(
        self, client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        await web_signup(client)
        [code] = await make_vouchers(ctx)
        session_id = await buy_with_voucher(client, code)
        page = await client.get("/sessions")
        response = await client.post(
            f"/admin/sessions/{session_id}/revoke", data={"csrf_token": csrf_from(page.text)}
        )
        assert response.status_code == 404
        assert await audit(ctx, "session.revoke") == []

    @pytest.mark.parametrize("path", CONSOLE_PAGES)
    async def test_operator_sees_every_page(
        self, operator_client: httpx.AsyncClient, ctx: AppContext, path: str
    ) -> None:
        await add_gateway(ctx)
        await make_vouchers(ctx, "basic")  # something in the audit log and the tables
        response = await operator_client.get(path)
        assert response.status_code == 200, response.text
        assert "Operator console" in response.text
        assert_accessible_forms(path, response.text)


class TestGateways:
    async def test_gateways_by_region_with_state(
        self, operator_client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        token = await add_gateway(ctx, "eu-west-1", "eu-west")
        beat = await operator_client.post(
            "/api/gateway/v1/heartbeat",
            json={
                "agent_version": "test",
                "interface_mode": "userspace",
                "peer_count": 3,
                "rx_bps": 12_500_000,
                "tx_bps": 1_000,
            },
            headers={"Authorization": f"Bearer {token}"},
        )
        assert beat.status_code == 200, beat.text
        page = (await operator_client.get("/admin")).text
        assert "EU West (London)" in page
        assert "eu-west-1" in page
        assert "online" in page
        assert "userspace" in page
        assert "12.5 Mbit/s" in page
        assert "No gateway in this region yet." in page  # the other regions

    async def test_add_gateway_shows_token_once_and_is_audited(
        self, operator_client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        response = await post_form(
            operator_client,
            "/admin",
            name="ap-1",
            region="ap-southeast",
            endpoint="198.51.100.5:51820",
        )
        assert response.status_code == 200
        assert "Its token is shown only now" in response.text
        assert "ap-1" in (await operator_client.get("/admin")).text
        assert "Its token is shown only now" not in (await operator_client.get("/admin")).text
        [entry] = await audit(ctx, "gateway.create")
        assert entry.actor == "ops@example.com"
        bad = await post_form(
            operator_client, "/admin", name="x", region="mars", endpoint="1.2.3.4:1"
        )
        assert bad.status_code == 422
        assert "unknown region" in bad.text

    async def test_change_a_gateways_endpoint(
        self, operator_client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        await add_gateway(ctx, "eu-west-1", "eu-west")
        page = (await operator_client.get("/admin")).text
        match = re.search(r'action="(/admin/gateways/[0-9a-f]+/endpoint)"', page)
        assert match, "no endpoint form"
        changed = await post_form(
            operator_client, "/admin", match.group(1), endpoint="gw1.example.net:443"
        )
        assert changed.status_code == 303
        shown = await operator_client.get(changed.headers["location"])
        assert "Endpoint changed" in shown.text and "gw1.example.net:443" in shown.text
        [entry] = await audit(ctx, "gateway.set_endpoint")
        assert entry.actor == "ops@example.com" and "gw1.example.net:443" in entry.detail
        bad = await post_form(operator_client, "/admin", match.group(1), endpoint="nope")
        assert bad.status_code == 422 and "HOST:PORT" in bad.text
        assert "gw1.example.net:443" in (await operator_client.get("/admin")).text


class TestSessions:
    async def test_search_revoke_and_extend(
        self, client: httpx.AsyncClient, operator_client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        buyer = await web_signup(client, "buyer@example.com")
        codes = await make_vouchers(ctx, "premium", 2)
        first = await buy_with_voucher(client, codes[0])
        second = await buy_with_voucher(client, codes[1])

        found = await operator_client.get("/admin/sessions", params={"q": buyer.email})
        assert found.status_code == 200
        assert f'data-session-id="{first}"' in found.text
        assert f'data-session-id="{second}"' in found.text
        assert_accessible_forms("sessions with rows", found.text)
        by_id = await operator_client.get("/admin/sessions", params={"q": first})
        assert f'data-session-id="{second}"' not in by_id.text

        revoke = await post_form(
            operator_client,
            f"/admin/sessions?q={buyer.email}",
            f"/admin/sessions/{first}/revoke",
            back=f"/admin/sessions?q={buyer.email}",
        )
        assert revoke.status_code == 303
        assert revoke.headers["location"].startswith("/admin/sessions?q=buyer")
        assert "notice=revoked" in revoke.headers["location"]
        shown = await operator_client.get(revoke.headers["location"])
        assert "Session revoked" in shown.text
        mine = await client.get(f"/sessions/{first}")
        assert "Cancelled" in mine.text
        assert "This session was cancelled." in mine.text

        extend = await post_form(
            operator_client, "/admin/sessions", f"/admin/sessions/{second}/extend", days="3"
        )
        assert extend.status_code == 303
        async with ctx.db.transaction() as db:
            session = await db.get(DataSession, second)
            # Not started yet: the extension gives it more time to start.
            assert session is not None and session.expires_at is None
            assert session.activation_deadline - session.created_at > timedelta(days=30)
        [revoked] = await audit(ctx, "session.revoke")
        [extended] = await audit(ctx, "session.extend")
        assert revoked.actor == extended.actor == "ops@example.com"
        assert revoked.target == f"session:{first}"

        again = await post_form(
            operator_client, "/admin/sessions", f"/admin/sessions/{first}/revoke"
        )
        assert again.status_code == 409
        assert "already ended" in again.text
        bad_days = await post_form(
            operator_client, "/admin/sessions", f"/admin/sessions/{second}/extend", days="-1"
        )
        assert bad_days.status_code == 422

    async def test_actions_need_the_csrf_token(
        self, client: httpx.AsyncClient, operator_client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        await web_signup(client)
        [code] = await make_vouchers(ctx)
        session_id = await buy_with_voucher(client, code)
        response = await operator_client.post(f"/admin/sessions/{session_id}/revoke", data={})
        assert response.status_code == 403
        assert await audit(ctx, "session.revoke") == []


class TestUsers:
    async def test_list_and_disable(
        self, client: httpx.AsyncClient, operator_client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        await web_signup(client, "someone@example.com")
        page = await operator_client.get("/admin/users", params={"q": "someone"})
        assert "someone@example.com" in page.text
        match = re.search(r'action="/admin/users/([0-9a-f]+)/disable"', page.text)
        assert match
        response = await post_form(
            operator_client, "/admin/users", f"/admin/users/{match.group(1)}/disable"
        )
        assert response.status_code == 303
        assert (await client.get("/sessions")).status_code == 303  # logged out everywhere
        assert len(await audit(ctx, "user.disable")) == 1


class TestPlansAndVouchers:
    async def test_create_and_update_plans(
        self, operator_client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        created = await post_form(
            operator_client,
            "/admin/plans",
            code="weekend",
            name="Weekend Session",
            data_limit_mb="2048",
            speed_mbps="20",
            validity_days="3",
            price_cents="299",
            currency="usd",
        )
        assert created.status_code == 303
        updated = await post_form(
            operator_client, "/admin/plans", "/admin/plans/weekend", price_cents="349"
        )
        assert updated.status_code == 303
        withdrawn = await post_form(
            operator_client, "/admin/plans", "/admin/plans/weekend", is_active="0"
        )
        assert withdrawn.status_code == 303
        async with ctx.db.transaction() as db:
            plan = await db.scalar(select(Plan).where(Plan.code == "weekend"))
            assert plan is not None
            assert (plan.price_cents, plan.is_active, plan.currency) == (349, False, "USD")
        assert len(await audit(ctx, "plan.create")) == 1
        assert len(await audit(ctx, "plan.update")) == 2
        bad = await post_form(operator_client, "/admin/plans", code="Bad Code", name="x")
        assert bad.status_code == 422

    async def test_create_vouchers_and_export_csv(
        self, operator_client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        response = await post_form(operator_client, "/admin/vouchers", plan_code="basic", count="3")
        assert response.status_code == 200
        codes = re.findall(r"<li>([A-Z0-9-]+)</li>", response.text)
        assert len(codes) == 3
        export = await operator_client.get("/admin/vouchers.csv")
        assert export.status_code == 200
        assert export.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(export.text)))
        assert {row["code"] for row in rows} == set(codes)
        assert {row["status"] for row in rows} == {"unused"}
        assert len(await audit(ctx, "voucher.create")) == 1
        assert len(await audit(ctx, "voucher.export")) == 1
        bad = await post_form(operator_client, "/admin/vouchers", plan_code="basic", count="0")
        assert bad.status_code == 422


class TestReportsAndAudit:
    async def test_reports_show_sales(
        self, client: httpx.AsyncClient, operator_client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        await web_signup(client)
        [code] = await make_vouchers(ctx, "premium")
        await buy_with_voucher(client, code)
        page = await operator_client.get("/admin/reports", params={"days": "7"})
        assert page.status_code == 200
        assert "14.99 USD" in page.text
        assert page.text.count("<tr><td>") == 7

    async def test_audit_page_lists_actions(
        self, operator_client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        await make_vouchers(ctx, "basic", 1)
        page = await operator_client.get("/admin/audit", params={"action": "voucher"})
        assert "voucher.create" in page.text
        assert "1 entry" in page.text


class TestRefunds:
    async def test_an_operator_refunds_a_voucher_purchase_with_a_new_code(
        self, client: httpx.AsyncClient, operator_client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        await web_signup(client)
        [code] = await make_vouchers(ctx, "basic")
        session_id = await buy_with_voucher(client, code, "basic")
        listing = await operator_client.get("/admin/sessions")
        assert f'action="/admin/sessions/{session_id}/refund"' in listing.text
        done = await post_form(
            operator_client,
            "/admin/sessions",
            f"/admin/sessions/{session_id}/refund",
            voucher="reissue",
        )
        assert done.status_code == 200 and "Purchase refunded" in done.text
        assert "New voucher for the person" in done.text
        again = await post_form(
            operator_client, "/admin/sessions", f"/admin/sessions/{session_id}/refund"
        )
        assert again.status_code == 409 and "Only a paid purchase" in again.text
        page = await client.get(f"/sessions/{session_id}")
        assert page.status_code == 200
        receipts = await client.get("/receipts")
        assert "(refunded)" in receipts.text
        checkout = await client.get("/checkout/basic")
        assert "can be refunded within 14 days of purchase" in checkout.text


class TestOutboxMail:
    async def test_without_a_mail_server_the_console_shows_what_would_be_sent(
        self, client: httpx.AsyncClient, operator_client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        from kswifi.control.mail import service as mail
        from kswifi.control.mail.letters import compose

        async with ctx.db.transaction() as db:
            letter = compose(ctx.settings, "verify_email", email="a@example.com", url="http://t/v1")
            await mail.queue(db, letter, "a@example.com")
        listing = await operator_client.get("/admin/mail")
        assert "outbox" in listing.text and "a@example.com" in listing.text
        found = re.search(r'href="/admin/mail/([0-9a-f]{32})"', listing.text)
        assert found
        page = await operator_client.get(f"/admin/mail/{found.group(1)}")
        assert "http://t/v1" in page.text  # the demo shows the text, link included
