"""Fixtures of the web app tests: a browser-like client that signs up through the forms."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest

from kswifi.control.deps import AppContext
from kswifi.control.gateways import service as gateways_service
from kswifi.control.purchases import service as purchases_service
from kswifi.control.users import service as users_service
from kswifi.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
PASSWORD = "correct horse 42"


def csrf_from(html: str) -> str:
    match = CSRF_INPUT.search(html)
    assert match, "page has no CSRF field"
    return match.group(1)


async def post_form(
    client: httpx.AsyncClient, page: str, action: str | None = None, **fields: str
) -> httpx.Response:
    """Load `page`, then submit its form to `action` (default: the same path) with its token."""
    loaded = await client.get(page)
    assert loaded.status_code == 200, loaded.text
    data = {"csrf_token": csrf_from(loaded.text), **fields}
    return await client.post(action or page.split("?")[0], data=data)


@dataclass
class WebUser:
    email: str
    password: str
    client: httpx.AsyncClient


async def web_signup(client: httpx.AsyncClient, email: str | None = None) -> WebUser:
    email = email or f"web-{uuid.uuid4().hex[:10]}@example.com"
    response = await post_form(client, "/signup", email=email, password=PASSWORD)
    assert response.status_code == 200, response.text
    assert "Almost there: log in" in response.text  # signing up never logs in
    await web_login(client, email)
    return WebUser(email, PASSWORD, client)


@pytest.fixture
async def web_user(client: httpx.AsyncClient) -> WebUser:
    return await web_signup(client)


# --- the rest of the system, set up through its services ----------------------------------


async def make_admin(ctx: AppContext, email: str | None = None) -> str:
    """An operator account; returns its email (password: PASSWORD)."""
    email = email or f"ops-{uuid.uuid4().hex[:8]}@example.com"
    async with ctx.db.transaction() as db:
        await users_service.create_admin(db, email, PASSWORD)
    return email


async def web_login(client: httpx.AsyncClient, email: str) -> None:
    response = await post_form(client, "/login", email=email, password=PASSWORD)
    assert response.status_code == 303, response.text


async def add_gateway(ctx: AppContext, name: str = "eu-west-1", region: str = "eu-west") -> str:
    """A registered gateway; returns its bearer token."""
    async with ctx.db.transaction() as db:
        _gateway, token = await gateways_service.register(
            db,
            ctx.secrets,
            ctx.settings,
            name=name,
            region_code=region,
            endpoint="192.0.2.10:51820",
        )
    return token


async def make_vouchers(ctx: AppContext, plan_code: str = "premium", count: int = 1) -> list[str]:
    async with ctx.db.transaction() as db:
        return await purchases_service.create_vouchers(
            db, plan_code=plan_code, count=count, actor="tests"
        )


async def buy_with_voucher(client: httpx.AsyncClient, code: str, plan_code: str = "premium") -> str:
    """Redeem through the checkout form; returns the new session's id."""
    response = await post_form(
        client, f"/checkout/{plan_code}", payment_method="voucher", voucher_code=code
    )
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith("/sessions/"), location
    return location.split("/")[2].split("?")[0]


_sequences: dict[str, int] = {}


async def report_usage(
    client: httpx.AsyncClient, token: str, session_id: str, rx_bytes: int, tx_bytes: int = 0
) -> httpx.Response:
    """What a gateway agent does: post one usage batch with the next sequence number."""
    _sequences[token] = _sequences.get(token, 0) + 1
    report = {
        "sequence": _sequences[token],
        "sent_at": datetime.now(UTC).isoformat(),
        "deltas": [{"session_id": session_id, "rx_bytes": rx_bytes, "tx_bytes": tx_bytes}],
    }
    response = await client.post(
        "/api/gateway/v1/usage",
        json=report,
        headers={"Authorization": f"Bearer {token}", PROTOCOL_HEADER: str(PROTOCOL_VERSION)},
    )
    assert response.status_code == 200, response.text
    return response
