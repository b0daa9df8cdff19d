"""Paying by card: the form redirects to Stripe Checkout, and the return pages explain."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr

from kswifi.control.config import Settings
from tests.control.purchases.fake_stripe import (
    API_KEY,
    WEBHOOK_SECRET,
    FakeStripe,
    checkout_event,
    sign,
)
from tests.web.conftest import WebUser, post_form


@pytest.fixture(scope="module")
def stripe() -> Iterator[FakeStripe]:
    server = FakeStripe()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(settings: Settings, stripe: FakeStripe) -> Settings:
    return settings.model_copy(
        update={
            "stripe_api_key": SecretStr(API_KEY),
            "stripe_webhook_secret": SecretStr(WEBHOOK_SECRET),
            "stripe_api_base": stripe.base_url,
        }
    )


async def test_card_payment_redirects_to_stripe_and_comes_back(
    client: httpx.AsyncClient, web_user: WebUser, stripe: FakeStripe
) -> None:
    page = await client.get("/checkout/premium")
    assert "Pay $14.99 by card" in page.text
    response = await post_form(client, "/checkout/premium", payment_method="stripe")
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("https://checkout.stripe.test/c/pay/cs_test_")
    [checkout] = [s for s in stripe.sessions.values() if s["url"] == location]
    success = re.search(r"/sessions\?checkout=success&purchase=(\w+)$", checkout["success_url"])
    assert success

    pending = await client.get(f"/sessions?checkout=success&purchase={success.group(1)}")
    assert "We are confirming your payment" in pending.text
    assert '<meta http-equiv="refresh" content="3">' in pending.text

    event = checkout_event(checkout)  # Stripe calls the signed webhook
    hook = await client.post(
        "/api/purchases/stripe/webhook",
        content=event,
        headers={"Stripe-Signature": sign(event), "Content-Type": "application/json"},
    )
    assert hook.status_code == 200, hook.text
    paid = await client.get(f"/sessions?checkout=success&purchase={success.group(1)}")
    assert "Payment received. Your data session is ready." in paid.text
    assert "Premium Session" in paid.text

    cancelled = await client.get("/checkout/premium?checkout=cancelled")
    assert "Payment cancelled. Nothing was charged." in cancelled.text


async def test_someone_elses_purchase_says_nothing(
    client: httpx.AsyncClient, web_user: WebUser
) -> None:
    page = await client.get("/sessions?checkout=success&purchase=0123456789abcdef")
    assert page.status_code == 200
    assert "confirming" not in page.text and "Payment received" not in page.text
