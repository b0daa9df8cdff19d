"""Buying with a voucher, generating the Connect Code and watching usage, all through forms."""

from __future__ import annotations

import re

import httpx

from kswifi.control.deps import AppContext
from tests.web.conftest import (
    WebUser,
    add_gateway,
    buy_with_voucher,
    csrf_from,
    make_vouchers,
    post_form,
    report_usage,
    web_signup,
)

GIB = 1024**3
INSTRUCTIONS = [
    "1. Scan this QR code with your device camera",
    "2. Tap &#39;Add&#39; when prompted to install profile",
    "3. Enable &#39;KSWiFi Connect&#39; in your device settings",
    "4. Enjoy secure global internet access!",
]


class TestPlans:
    async def test_three_tiers_with_what_works(self, client: httpx.AsyncClient) -> None:
        page = await client.get("/plans")
        assert page.status_code == 200
        for name, data, speed in (
            ("Basic Session", "1 GB", "10 Mbps"),
            ("Premium Session", "5 GB", "25 Mbps"),
            ("Ultra Session", "20 GB", "50 Mbps"),
        ):
            assert name in page.text
            assert f"<dd>{data}</dd>" in page.text
            assert f"<dd>{speed}</dd>" in page.text
        for line in ("480p quality", "720p YouTube, Netflix", "Online games with low latency"):
            assert line in page.text
        assert "$4.99" in page.text


class TestCheckout:
    async def test_needs_login(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/checkout/premium")
        assert response.status_code == 303
        assert response.headers["location"] == "/login?next=/checkout/premium"

    async def test_unknown_plan_is_404(self, client: httpx.AsyncClient, web_user: WebUser) -> None:
        assert (await client.get("/checkout/nope")).status_code == 404

    async def test_voucher_buys_a_session(
        self, client: httpx.AsyncClient, web_user: WebUser, ctx: AppContext
    ) -> None:
        [code] = await make_vouchers(ctx, "premium")
        session_id = await buy_with_voucher(client, code)
        page = await client.get(f"/sessions/{session_id}?notice=bought")
        assert page.status_code == 200
        assert "Premium Session" in page.text
        assert "0 GB of 5 GB used" in page.text
        assert "Your data session is ready" in page.text
        listing = await client.get("/sessions")
        assert f"/sessions/{session_id}" in listing.text

    async def test_used_voucher_shows_the_form_with_a_message(
        self, client: httpx.AsyncClient, web_user: WebUser, ctx: AppContext
    ) -> None:
        [code] = await make_vouchers(ctx, "premium")
        await buy_with_voucher(client, code)
        response = await post_form(
            client, "/checkout/premium", payment_method="voucher", voucher_code=code
        )
        assert response.status_code == 409
        assert "already been used" in response.text
        sessions = await client.get("/api/sessions")  # cookie auth is not for the JSON API
        assert sessions.status_code == 401

    async def test_wrong_code_and_empty_code(
        self, client: httpx.AsyncClient, web_user: WebUser
    ) -> None:
        wrong = await post_form(
            client, "/checkout/basic", payment_method="voucher", voucher_code="NOPE-NOPE"
        )
        assert wrong.status_code == 404
        assert "No voucher has this code" in wrong.text
        empty = await post_form(
            client, "/checkout/basic", payment_method="voucher", voucher_code=""
        )
        assert empty.status_code == 422
        assert "Enter your voucher code" in empty.text

    async def test_voucher_of_another_plan(
        self, client: httpx.AsyncClient, web_user: WebUser, ctx: AppContext
    ) -> None:
        [code] = await make_vouchers(ctx, "ultra")
        response = await post_form(
            client, "/checkout/basic", payment_method="voucher", voucher_code=code
        )
        assert response.status_code == 422
        assert "Ultra Session" in response.text

    async def test_double_submit_buys_once(
        self, client: httpx.AsyncClient, web_user: WebUser, ctx: AppContext
    ) -> None:
        page = await client.get("/checkout/basic")
        key = re.search(r'name="idempotency_key" value="([^"]+)"', page.text)
        assert key
        data = {
            "csrf_token": csrf_from(page.text),
            "idempotency_key": key.group(1) + "-demo",
            "payment_method": "dev",
        }
        first = await client.post("/checkout/basic", data=data)
        second = await client.post("/checkout/basic", data=data)
        assert first.status_code == second.status_code == 303
        assert first.headers["location"] == second.headers["location"]
        listing = await client.get("/sessions")
        assert listing.text.count("Basic Session</h2>") == 1

    async def test_demo_button_only_when_enabled(
        self, client: httpx.AsyncClient, web_user: WebUser, ctx: AppContext
    ) -> None:
        assert "Get it free (demo mode)" in (await client.get("/checkout/basic")).text
        ctx.settings.dev_payments = False
        assert "Get it free" not in (await client.get("/checkout/basic")).text
        refused = await post_form(client, "/checkout/basic", payment_method="dev")
        assert refused.status_code == 403


class TestSetup:
    async def test_generate_connect_code(
        self, client: httpx.AsyncClient, web_user: WebUser, ctx: AppContext
    ) -> None:
        await add_gateway(ctx)
        [code] = await make_vouchers(ctx, "premium")
        session_id = await buy_with_voucher(client, code)
        setup = await client.get(f"/sessions/{session_id}/setup")
        assert setup.status_code == 200
        assert "<h1>KSWiFi Connect Setup</h1>" in setup.text
        assert "Generate Connect Code</button>" in setup.text
        assert "EU West (London)" in setup.text

        ready = await post_form(client, f"/sessions/{session_id}/setup", region="eu-west")
        assert ready.status_code == 200, ready.text
        assert ready.headers["cache-control"] == "no-store"
        text = ready.text
        assert "Your KSWiFi Connect profile is ready" in text
        assert 'src="data:image/png;base64,' in text
        assert 'alt="Connect QR Code"' in text
        assert "Scan to activate secure internet access" in text
        for step in INSTRUCTIONS:
            assert step in text
        assert "EU West (London)" in text
        assert "Open on this phone" in text
        setup_link = re.search(r'href="(/setup/[^"]+)" data-field="open-on-phone"', text)
        conf = re.search(r'href="(/api/connect/profiles/[^"]+/config\?t=[^"]+)"', text)
        ios = re.search(r'href="(/api/connect/profiles/[^"]+/mobileconfig\?t=[^"]+)"', text)
        assert setup_link and conf and ios
        download = await client.get(conf.group(1).replace("&amp;", "&"))
        assert download.status_code == 200
        assert "[Interface]" in download.text
        apple = await client.get(ios.group(1).replace("&amp;", "&"))
        assert apple.headers["content-type"].startswith("application/x-apple-aspen-config")

        usage = await client.get(f"/sessions/{session_id}")
        assert "Time left" in usage.text
        # The clock starts at the phone's first byte through a gateway, not at the code.
        assert "Starts when your phone first connects" in usage.text

    async def test_no_gateway_is_a_clear_message(
        self, client: httpx.AsyncClient, web_user: WebUser, ctx: AppContext
    ) -> None:
        [code] = await make_vouchers(ctx, "basic")
        session_id = await buy_with_voucher(client, code, "basic")
        response = await post_form(client, f"/sessions/{session_id}/setup")
        assert response.status_code == 503
        assert "No gateway is available" in response.text
        assert "KSWiFi Connect Setup" in response.text

    async def test_someone_elses_session_is_404(
        self, client: httpx.AsyncClient, app: object, web_user: WebUser, ctx: AppContext
    ) -> None:
        [code] = await make_vouchers(ctx, "basic")
        session_id = await buy_with_voucher(client, code, "basic")
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as other:
            await web_signup(other, "other@example.com")
            for path in (f"/sessions/{session_id}", f"/sessions/{session_id}/setup"):
                assert (await other.get(path)).status_code == 404


class TestUsage:
    async def test_usage_reported_by_the_gateway_shows_on_the_page(
        self, client: httpx.AsyncClient, web_user: WebUser, ctx: AppContext
    ) -> None:
        token = await add_gateway(ctx)
        [code] = await make_vouchers(ctx, "premium")
        session_id = await buy_with_voucher(client, code)
        await post_form(client, f"/sessions/{session_id}/setup")
        await report_usage(client, token, session_id, rx_bytes=GIB, tx_bytes=GIB + GIB // 10)
        page = await client.get(f"/sessions/{session_id}")
        assert "2.1 GB of 5 GB used" in page.text
        assert 'aria-valuenow="42"' in page.text
        assert "No data used yet" not in page.text  # the chart has its first point
        await report_usage(client, token, session_id, rx_bytes=3 * GIB)
        ended = await client.get(f"/sessions/{session_id}")
        assert "5 GB of 5 GB used" in ended.text
        assert "Data used up" in ended.text
        assert "This session&#39;s data is used up" in ended.text
        assert "data-live" not in ended.text

    async def test_stream_accepts_the_login_cookie(
        self, client: httpx.AsyncClient, web_user: WebUser, ctx: AppContext
    ) -> None:
        [code] = await make_vouchers(ctx, "basic")
        session_id = await buy_with_voucher(client, code, "basic")
        ctx.settings.sse_max_seconds = 0.2
        async with client.stream("GET", f"/api/sessions/{session_id}/usage/stream") as stream:
            assert stream.status_code == 200
            body = "".join([chunk async for chunk in stream.aiter_text()])
        assert "event: usage" in body
        assert "0 GB of 1 GB used" in body
