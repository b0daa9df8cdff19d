"""Operator refunds: the stated policy, a voucher voided or re-issued, a card payment refunded
through Stripe once, the session ended and the person's devices moved on, refunded receipts,
operators told; and what cannot be refunded."""

from __future__ import annotations

import json
from typing import Any

import httpx
from sqlalchemy import select, update

from kswifi.control.deps import AppContext
from kswifi.control.models import AuditEntry, DataSession, Purchase, WebhookEvent
from tests.control.plans.accounts import Account
from tests.control.purchases.conftest import MakeVouchers
from tests.control.purchases.fake_stripe import FakeStripe, checkout_event, sign

WEBHOOK = "/api/purchases/stripe/webhook"


async def _buy_with_voucher(client: httpx.AsyncClient, buyer: Account, code: str) -> dict[str, Any]:
    bought = await client.post(
        "/api/purchases",
        json={"plan_code": "premium", "payment_method": "voucher", "voucher_code": code},
        headers=buyer.headers,
    )
    assert bought.status_code == 201, bought.text
    body: dict[str, Any] = bought.json()
    return body


async def _refund(
    client: httpx.AsyncClient, admin: Account, purchase_id: str, **body: str
) -> httpx.Response:
    return await client.post(
        f"/api/admin/purchases/{purchase_id}/refund", json=body or None, headers=admin.headers
    )


async def test_a_voucher_purchase_refunded_ends_its_session_and_tells_operators(
    client: httpx.AsyncClient,
    ctx: AppContext,
    admin: Account,
    buyer: Account,
    make_vouchers: MakeVouchers,
) -> None:
    [code] = await make_vouchers("premium")
    bought = await _buy_with_voucher(client, buyer, code)
    refused = await _refund(client, buyer, bought["id"])
    assert refused.status_code == 403
    done = await _refund(client, admin, bought["id"])
    assert done.status_code == 200, done.text
    assert done.json() == {
        "purchase_id": bought["id"],
        "status": "refunded",
        "within_policy": True,
        "provider_refund_id": None,
        "reissued_voucher": None,
    }
    async with ctx.db.transaction() as db:
        purchase = await db.get(Purchase, bought["id"])
        session = await db.get(DataSession, bought["session_id"])
        assert purchase is not None and purchase.status == "refunded"
        assert session is not None
        assert (session.status, session.end_reason) == ("revoked", "refunded")
        events = list(await db.scalars(select(WebhookEvent.payload)))
        audit = list(await db.scalars(select(AuditEntry.action)))
    facts = json.loads(events[-1])
    assert facts["source"] == "operator" and facts["purchase_id"] == bought["id"]
    assert "purchase.refund" in audit
    again = await _refund(client, admin, bought["id"])
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_refundable"
    reused = await client.post(
        "/api/purchases",
        json={"plan_code": "premium", "payment_method": "voucher", "voucher_code": code},
        headers=buyer.headers,
    )
    assert reused.status_code == 409  # a voided voucher stays spent
    receipt = await client.get(f"/api/purchases/{bought['id']}/receipt", headers=buyer.headers)
    assert receipt.status_code == 200


async def test_a_reissued_voucher_buys_again_and_a_used_session_is_outside_the_policy(
    client: httpx.AsyncClient,
    ctx: AppContext,
    admin: Account,
    buyer: Account,
    make_vouchers: MakeVouchers,
) -> None:
    [code] = await make_vouchers("premium")
    bought = await _buy_with_voucher(client, buyer, code)
    async with ctx.db.transaction() as db:
        await db.execute(
            update(DataSession)
            .where(DataSession.id == bought["session_id"])
            .values(used_bytes=1024, rx_bytes=1024)
        )
    done = await _refund(client, admin, bought["id"], voucher="reissue")
    assert done.status_code == 200, done.text
    assert done.json()["within_policy"] is False
    new_code = done.json()["reissued_voucher"]
    assert new_code and new_code != code
    again = await _buy_with_voucher(client, buyer, new_code)
    assert again["status"] == "paid"
    bad = await _refund(client, admin, again["id"], voucher="keep")
    assert bad.status_code == 422


async def test_a_card_payment_is_refunded_through_stripe_once(
    client: httpx.AsyncClient,
    ctx: AppContext,
    admin: Account,
    buyer: Account,
    fake_stripe: FakeStripe,
) -> None:
    started = await client.post(
        "/api/purchases",
        json={"plan_code": "premium", "payment_method": "stripe"},
        headers=buyer.headers,
    )
    purchase = started.json()
    [session] = [
        s for s in fake_stripe.sessions.values() if s["client_reference_id"] == purchase["id"]
    ]
    payload = checkout_event(session, payment_intent="pi_refund_me")
    paid = await client.post(
        WEBHOOK,
        content=payload,
        headers={"Content-Type": "application/json", "Stripe-Signature": sign(payload)},
    )
    assert paid.status_code == 200
    done = await _refund(client, admin, purchase["id"])
    assert done.status_code == 200, done.text
    refund_id = done.json()["provider_refund_id"]
    assert refund_id in fake_stripe.refunds
    [request] = [r for r in fake_stripe.requests if r["path"] == "/v1/refunds"]
    assert request["form"]["payment_intent"] == "pi_refund_me"
    assert request["idempotency_key"] == f"kswifi-refund-{purchase['id']}"


async def test_checkout_states_the_policy(
    client: httpx.AsyncClient, ctx: AppContext, buyer: Account
) -> None:
    from kswifi.control.purchases.refunds import policy_text

    assert policy_text(ctx.settings) == (
        "A session you have not used can be refunded within 14 days of purchase: write to us "
        "with your receipt reference."
    )
    none = ctx.settings.model_copy(update={"refund_unused_days": 0})
    assert policy_text(none) == "Purchases are not refundable."
