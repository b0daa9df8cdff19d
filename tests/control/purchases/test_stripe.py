"""Stripe Checkout through the real `stripe` library against a fake Stripe API on loopback,
and fulfilment only from webhooks whose signature verifies."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from kswifi.control.deps import AppContext
from tests.control.plans.accounts import Account
from tests.control.purchases.db_state import session_of, state
from tests.control.purchases.fake_stripe import (
    API_KEY,
    WEBHOOK_SECRET,
    FakeStripe,
    checkout_event,
    sign,
)

WEBHOOK = "/api/purchases/stripe/webhook"

# stripe-python's HTTPXClient hands its form body to httpx as `data=`; httpx prefers `content=`.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Use 'content=<...>' to upload raw bytes/text content.:DeprecationWarning"
)


async def _checkout(
    client: httpx.AsyncClient, buyer: Account, plan_code: str = "premium"
) -> dict[str, Any]:
    response = await client.post(
        "/api/purchases",
        json={"plan_code": plan_code, "payment_method": "stripe"},
        headers=buyer.headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _deliver(
    client: httpx.AsyncClient, payload: str, signature: str | None = None
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    headers["Stripe-Signature"] = sign(payload) if signature is None else signature
    return await client.post(WEBHOOK, content=payload, headers=headers)


def _stripe_session(fake: FakeStripe, purchase: dict[str, Any]) -> dict[str, Any]:
    [session] = [s for s in fake.sessions.values() if s["client_reference_id"] == purchase["id"]]
    return session


class TestCheckout:
    async def test_creates_a_checkout_session_and_waits_for_payment(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account, fake_stripe: FakeStripe
    ) -> None:
        purchase = await _checkout(client, buyer, "premium")
        assert purchase["status"] == "pending"
        assert purchase["provider"] == "stripe"
        assert purchase["session_id"] is None
        assert (purchase["amount_cents"], purchase["currency"]) == (1499, "USD")
        session = _stripe_session(fake_stripe, purchase)
        assert purchase["checkout_url"] == session["url"]

        [request] = fake_stripe.requests
        assert request["path"] == "/v1/checkout/sessions"
        assert request["authorization"] == f"Bearer {API_KEY}"
        assert request["idempotency_key"] == f"kswifi-purchase-{purchase['id']}"
        form = request["form"]
        assert form["mode"] == "payment"
        assert form["client_reference_id"] == purchase["id"]
        assert form["customer_email"] == buyer.email
        assert form["metadata[purchase_id]"] == purchase["id"]
        assert form["metadata[plan_code]"] == "premium"
        assert form["line_items[0][quantity]"] == "1"
        assert form["line_items[0][price_data][currency]"] == "usd"
        assert form["line_items[0][price_data][unit_amount]"] == "1499"
        product = form["line_items[0][price_data][product_data][name]"]
        assert product == "KSWiFi Connect Premium Session"
        description = form["line_items[0][price_data][product_data][description]"]
        assert "5 GB" in description
        assert "VPN" not in description
        assert form["success_url"] == (
            f"http://testserver/sessions?checkout=success&purchase={purchase['id']}"
        )
        assert form["cancel_url"] == "http://testserver/checkout/premium?checkout=cancelled"

        assert await state(ctx) == {"purchases": 1, "sessions": 0, "events": 0}
        shown = await client.get(f"/api/purchases/{purchase['id']}", headers=buyer.headers)
        assert shown.json()["status"] == "pending"

    async def test_provider_error_is_502_and_writes_nothing(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account, fake_stripe: FakeStripe
    ) -> None:
        fake_stripe.fail_with = 400
        response = await client.post(
            "/api/purchases",
            json={"plan_code": "basic", "payment_method": "stripe"},
            headers=buyer.headers,
        )
        assert response.status_code == 502
        error = response.json()["error"]
        assert error["code"] == "payment_provider_error"
        assert "stripe" not in error["message"].lower()
        assert await state(ctx) == {"purchases": 0, "sessions": 0, "events": 0}

    async def test_not_configured_is_503(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account, fake_stripe: FakeStripe
    ) -> None:
        ctx.settings.stripe_api_key = SecretStr("")
        response = await client.post(
            "/api/purchases",
            json={"plan_code": "basic", "payment_method": "stripe"},
            headers=buyer.headers,
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "payments_unavailable"
        assert fake_stripe.requests == []
        assert await state(ctx) == {"purchases": 0, "sessions": 0, "events": 0}

    async def test_a_free_plan_needs_no_checkout(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        buyer: Account,
        admin: Account,
        fake_stripe: FakeStripe,
    ) -> None:
        plan = {
            "code": "trial",
            "name": "Trial Session",
            "data_limit_mb": 100,
            "speed_mbps": 5,
            "validity_days": 1,
            "price_cents": 0,
        }
        created = await client.post("/api/admin/plans", json=plan, headers=admin.headers)
        assert created.status_code == 201
        purchase = await _checkout(client, buyer, "trial")
        assert (purchase["status"], purchase["amount_cents"]) == ("paid", 0)
        assert purchase["checkout_url"] is None
        assert purchase["session_id"] is not None
        assert fake_stripe.requests == []


class TestWebhook:
    async def test_completed_checkout_pays_and_creates_the_session(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account, fake_stripe: FakeStripe
    ) -> None:
        purchase = await _checkout(client, buyer, "ultra")
        payload = checkout_event(_stripe_session(fake_stripe, purchase))
        response = await _deliver(client, payload)
        assert response.status_code == 200, response.text
        assert response.json() == {"received": True, "duplicate": False}

        paid = (await client.get(f"/api/purchases/{purchase['id']}", headers=buyer.headers)).json()
        assert paid["status"] == "paid"
        assert paid["paid_at"] is not None
        assert paid["checkout_url"] is None
        session = await session_of(ctx, purchase["id"])
        assert session is not None
        assert paid["session_id"] == session.id
        assert (session.user_id, session.plan_code, session.max_devices) == (buyer.id, "ultra", 3)
        assert await state(ctx) == {"purchases": 1, "sessions": 1, "events": 1}

    async def test_replayed_event_fulfils_nothing_twice(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account, fake_stripe: FakeStripe
    ) -> None:
        purchase = await _checkout(client, buyer)
        payload = checkout_event(_stripe_session(fake_stripe, purchase))
        assert (await _deliver(client, payload)).json()["duplicate"] is False
        for _ in range(3):
            again = await _deliver(client, payload)  # freshly signed, same event id
            assert again.status_code == 200
            assert again.json() == {"received": True, "duplicate": True}
        assert await state(ctx) == {"purchases": 1, "sessions": 1, "events": 1}

    async def test_concurrent_replays_fulfil_once(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account, fake_stripe: FakeStripe
    ) -> None:
        purchase = await _checkout(client, buyer)
        payload = checkout_event(_stripe_session(fake_stripe, purchase))
        responses = await asyncio.gather(*(_deliver(client, payload) for _ in range(20)))
        assert [r.status_code for r in responses] == [200] * 20
        duplicates = sorted(r.json()["duplicate"] for r in responses)
        assert duplicates == [False] + [True] * 19
        assert await state(ctx) == {"purchases": 1, "sessions": 1, "events": 1}

    async def test_two_different_paid_events_still_fulfil_once(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account, fake_stripe: FakeStripe
    ) -> None:
        purchase = await _checkout(client, buyer)
        session = _stripe_session(fake_stripe, purchase)
        completed = checkout_event(session)
        succeeded = checkout_event(session, kind="checkout.session.async_payment_succeeded")
        results = await asyncio.gather(_deliver(client, completed), _deliver(client, succeeded))
        assert [r.status_code for r in results] == [200, 200]
        assert await state(ctx) == {"purchases": 1, "sessions": 1, "events": 2}

    async def test_unpaid_completion_waits_for_async_payment(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account, fake_stripe: FakeStripe
    ) -> None:
        purchase = await _checkout(client, buyer)
        session = _stripe_session(fake_stripe, purchase)
        await _deliver(client, checkout_event(session, payment_status="unpaid"))
        assert await session_of(ctx, purchase["id"]) is None
        await _deliver(
            client, checkout_event(session, kind="checkout.session.async_payment_succeeded")
        )
        assert await session_of(ctx, purchase["id"]) is not None

    async def test_expired_checkout_fails_the_purchase(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account, fake_stripe: FakeStripe
    ) -> None:
        purchase = await _checkout(client, buyer)
        session = _stripe_session(fake_stripe, purchase)
        payload = checkout_event(session, kind="checkout.session.expired", payment_status="unpaid")
        assert (await _deliver(client, payload)).status_code == 200
        shown = await client.get(f"/api/purchases/{purchase['id']}", headers=buyer.headers)
        assert shown.json()["status"] == "failed"
        late = await _deliver(client, checkout_event(session))
        assert late.status_code == 200
        assert await session_of(ctx, purchase["id"]) is None

    async def test_wrong_amount_is_not_fulfilled(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account, fake_stripe: FakeStripe
    ) -> None:
        purchase = await _checkout(client, buyer)
        payload = checkout_event(_stripe_session(fake_stripe, purchase), amount_total=1)
        assert (await _deliver(client, payload)).status_code == 200
        assert await session_of(ctx, purchase["id"]) is None
        shown = await client.get(f"/api/purchases/{purchase['id']}", headers=buyer.headers)
        assert shown.json()["status"] == "pending"

    async def test_unknown_checkout_and_other_events_are_acknowledged(
        self, client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        stranger = {"id": "cs_test_unknown", "object": "checkout.session", "amount_total": 1}
        assert (await _deliver(client, checkout_event(stranger))).status_code == 200
        other = json.dumps(
            {"id": "evt_other", "type": "customer.created", "data": {"object": {"id": "cus_1"}}}
        )
        assert (await _deliver(client, other)).status_code == 200
        assert await state(ctx) == {"purchases": 0, "sessions": 0, "events": 2}

    @pytest.mark.parametrize(
        "forge",
        [
            "missing",
            "garbage",
            "wrong_secret",
            "tampered_body",
            "too_old",
            "v0_scheme_only",
        ],
    )
    async def test_bad_signature_is_400_and_changes_nothing(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        buyer: Account,
        fake_stripe: FakeStripe,
        forge: str,
    ) -> None:
        purchase = await _checkout(client, buyer)
        payload = checkout_event(_stripe_session(fake_stripe, purchase))
        headers = {"Content-Type": "application/json"}
        body = payload
        if forge == "garbage":
            headers["Stripe-Signature"] = "definitely not a signature"
        elif forge == "wrong_secret":
            headers["Stripe-Signature"] = sign(payload, secret="whsec_someone_else")
        elif forge == "tampered_body":
            headers["Stripe-Signature"] = sign(payload)
            body = payload.replace('"paid"', '"paid" ')
        elif forge == "too_old":
            headers["Stripe-Signature"] = sign(payload, timestamp=int(time.time()) - 3600)
        elif forge == "v0_scheme_only":
            headers["Stripe-Signature"] = sign(payload).replace("v1=", "v0=")
        response = await client.post(WEBHOOK, content=body, headers=headers)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_signature"
        assert await state(ctx) == {"purchases": 1, "sessions": 0, "events": 0}

    async def test_signed_garbage_is_400(self, client: httpx.AsyncClient, ctx: AppContext) -> None:
        for payload in ("not json", json.dumps({"hello": "world"})):
            response = await _deliver(client, payload)
            assert response.status_code == 400
        assert await state(ctx) == {"purchases": 0, "sessions": 0, "events": 0}

    async def test_webhook_without_a_secret_configured_is_503(
        self, client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        ctx.settings.stripe_webhook_secret = SecretStr("")
        payload = checkout_event({"id": "cs_x", "object": "checkout.session"})
        response = await _deliver(client, payload, signature=sign(payload, WEBHOOK_SECRET))
        assert response.status_code == 503
        assert await state(ctx) == {"purchases": 0, "sessions": 0, "events": 0}


def _charge_event(kind: str, obj: dict[str, Any]) -> str:
    return json.dumps(
        {
            "id": f"evt_{kind.replace('.', '_')}_{int(time.time() * 1000)}",
            "object": "event",
            "type": kind,
            "created": int(time.time()),
            "data": {"object": obj},
        }
    )


async def _operator_events(ctx: AppContext) -> list[tuple[str, dict[str, Any]]]:
    from sqlalchemy import select

    from kswifi.control.models import WebhookEvent

    async with ctx.db.transaction() as db:
        rows = await db.scalars(select(WebhookEvent).order_by(WebhookEvent.created_at))
        return [(row.type, json.loads(row.payload)) for row in rows]


class TestOperatorEvents:
    async def test_refunds_disputes_and_failed_payments_reach_operators(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account, fake_stripe: FakeStripe
    ) -> None:
        paid = await _checkout(client, buyer, "premium")
        session = _stripe_session(fake_stripe, paid)
        completed = checkout_event(session, payment_intent="pi_kswifi_1")
        assert (await _deliver(client, completed)).status_code == 200
        refund = _charge_event(
            "charge.refunded",
            {"object": "charge", "payment_intent": "pi_kswifi_1", "amount_refunded": 1499},
        )
        assert (await _deliver(client, refund)).status_code == 200
        dispute = _charge_event(
            "charge.dispute.created",
            {
                "object": "dispute",
                "payment_intent": "pi_kswifi_1",
                "amount": 1499,
                "reason": "fraudulent",
            },
        )
        assert (await _deliver(client, dispute)).status_code == 200
        unknown = _charge_event("charge.refunded", {"object": "charge", "payment_intent": "pi_x"})
        assert (await _deliver(client, unknown)).status_code == 200

        unpaid = await _checkout(client, buyer, "basic")
        expired = checkout_event(
            _stripe_session(fake_stripe, unpaid),
            kind="checkout.session.expired",
            payment_status="unpaid",
        )
        assert (await _deliver(client, expired)).status_code == 200

        events = await _operator_events(ctx)
        assert [kind for kind, _ in events] == [
            "purchase.refunded",
            "purchase.disputed",
            "payment.failed",
        ]
        refunded, disputed, failed = (facts for _, facts in events)
        assert refunded["purchase_id"] == paid["id"] and refunded["stripe_amount"] == 1499
        assert disputed["stripe_reason"] == "fraudulent"
        assert failed["purchase_id"] == unpaid["id"]
        assert failed["kind"] == "checkout.session.expired"
