"""Receipts: one e-mail per paid purchase (a real SMTP server), a receipts page, a printable
receipt page and the API's receipt; nobody sees another person's."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import select

from kswifi.control.config import Settings
from kswifi.control.deps import AppContext
from kswifi.control.models import DataSession, Purchase, utcnow
from kswifi.control.worker import Worker
from kswifi.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION
from tests.conftest import register_and_login
from tests.mailsink import MailSink
from tests.web.conftest import buy_with_voucher, make_vouchers, web_signup


@pytest.fixture
def settings(settings: Settings, smtp: MailSink) -> Settings:
    return settings.model_copy(
        update={"smtp_url": SecretStr(smtp.url), "email_verification": False}
    )


async def _purchase_of(ctx: AppContext, session_id: str) -> Purchase:
    async with ctx.db.transaction() as db:
        session = await db.get(DataSession, session_id)
        assert session is not None
        purchase = await db.scalar(select(Purchase).where(Purchase.id == session.purchase_id))
        assert purchase is not None
        return purchase


async def test_a_purchase_is_receipted_by_mail_and_on_its_page(
    app: FastAPI, client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink
) -> None:
    buyer = await web_signup(client, "buyer@example.com")
    [code] = await make_vouchers(ctx, "premium")
    session_id = await buy_with_voucher(client, code)
    purchase = await _purchase_of(ctx, session_id)
    worker = Worker(ctx)
    await worker.deliver_mail(utcnow())
    (letter,) = smtp.wait_for(1)
    assert letter.recipients == [buyer.email]
    assert letter.message["Subject"] == "Your KSWiFi Connect receipt: Premium Session, $14.99"
    reference = f"KSW-{purchase.id[:12].upper()}"
    assert reference in letter.text and "Method:    Voucher" in letter.text
    assert f"http://testserver/receipts/{purchase.id}" in letter.text

    listing = await client.get("/receipts")
    assert listing.status_code == 200
    assert reference in listing.text and "$14.99" in listing.text
    page = await client.get(f"/receipts/{purchase.id}")
    assert page.status_code == 200
    for text in ("Premium Session", "$14.99 (USD)", "Voucher", reference, "Billed to buyer@"):
        assert text in page.text
    assert "data-print" in page.text

    api_user = await register_and_login(client, "api@example.com")
    other = await client.get(f"/api/purchases/{purchase.id}/receipt", headers=api_user.headers)
    assert other.status_code == 404
    stranger = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://testserver",
        headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION)},
    )
    await web_signup(stranger, "stranger@example.com")
    assert (await stranger.get(f"/receipts/{purchase.id}")).status_code == 404


async def test_the_api_receipt_of_a_dev_purchase(
    client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink
) -> None:
    person = await register_and_login(client, "dev@example.com")
    bought = await client.post(
        "/api/purchases",
        json={"plan_code": "basic", "payment_method": "dev"},
        headers={**person.headers, "Idempotency-Key": "one"},
    )
    assert bought.status_code == 201
    again = await client.post(
        "/api/purchases",
        json={"plan_code": "basic", "payment_method": "dev"},
        headers={**person.headers, "Idempotency-Key": "one"},
    )
    assert again.status_code == 200  # a replay: no second purchase, no second receipt
    purchase_id = bought.json()["id"]
    receipt = await client.get(f"/api/purchases/{purchase_id}/receipt", headers=person.headers)
    assert receipt.status_code == 200
    body = receipt.json()
    assert body["payment_method"] == "Demo (no charge)"
    assert body["currency"] == "USD" and body["plan_name"] == "Basic Session"
    await Worker(ctx).deliver_mail(utcnow())
    assert len(smtp.wait_for(1)) == 1
    assert (
        await client.get("/api/purchases/nope/receipt", headers=person.headers)
    ).status_code == 404
