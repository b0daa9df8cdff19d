"""Fixtures of the operator API tests: an operator, and users with sessions bought by voucher."""

from __future__ import annotations

import uuid

import httpx
import pytest

from kswifi.control.deps import AppContext
from kswifi.control.purchases import service as purchases_service
from kswifi.control.users import service as users_service
from tests.conftest import ApiUser, register_and_login

PASSWORD = "correct horse 42"


@pytest.fixture
async def operator(client: httpx.AsyncClient, ctx: AppContext) -> ApiUser:
    email = f"ops-{uuid.uuid4().hex[:8]}@example.com"
    async with ctx.db.transaction() as db:
        await users_service.create_admin(db, email, PASSWORD)
    login = await client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return ApiUser(email, PASSWORD, login.json())


async def buy_session(
    client: httpx.AsyncClient, ctx: AppContext, buyer: ApiUser, plan_code: str = "premium"
) -> str:
    async with ctx.db.transaction() as db:
        [code] = await purchases_service.create_vouchers(
            db, plan_code=plan_code, count=1, actor="tests"
        )
    bought = await client.post(
        "/api/purchases",
        json={"payment_method": "voucher", "voucher_code": code},
        headers=buyer.headers,
    )
    assert bought.status_code == 201, bought.text
    session_id = bought.json()["session_id"]
    assert isinstance(session_id, str)
    return session_id


@pytest.fixture
async def buyer(client: httpx.AsyncClient) -> ApiUser:
    return await register_and_login(client, "buyer@example.com")
