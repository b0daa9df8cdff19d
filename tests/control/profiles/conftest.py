"""Fixtures for Connect Profile tests: owners, sessions and a gateway, made without HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from kswifi.control.deps import AppContext
from kswifi.control.gateways import service as gateways
from kswifi.control.models import DataSession, Gateway, Plan, Purchase, User
from kswifi.control.sessions import service as sessions


@dataclass
class Owner:
    """A user and the headers that act as them."""

    id: str
    headers: dict[str, str]


@dataclass
class RegisteredGateway:
    id: str
    name: str
    region: str
    endpoint: str
    public_key: str
    token: str


MakeOwner = Callable[[], Awaitable[Owner]]
MakeSession = Callable[..., Awaitable[DataSession]]
MakeGateway = Callable[..., Awaitable[RegisteredGateway]]


@pytest.fixture
def make_owner(ctx: AppContext) -> MakeOwner:
    async def _make() -> Owner:
        async with ctx.db.transaction() as db:
            user = User(email=f"owner-{uuid.uuid4().hex[:12]}@example.com", password_hash="x")
            db.add(user)
            await db.flush()
            user_id = user.id
        token = ctx.secrets.issue_access_token(user_id, False, timedelta(minutes=30))
        return Owner(user_id, {"Authorization": f"Bearer {token}"})

    return _make


@pytest.fixture
async def owner(make_owner: MakeOwner) -> Owner:
    return await make_owner()


@pytest.fixture
def make_session(ctx: AppContext) -> MakeSession:
    async def _make(user_id: str, plan_code: str = "premium", **changes: Any) -> DataSession:
        async with ctx.db.transaction() as db:
            plan = await db.scalar(select(Plan).where(Plan.code == plan_code))
            assert plan is not None
            purchase = Purchase(
                user_id=user_id,
                plan_id=plan.id,
                provider="dev",
                status="paid",
                amount_cents=0,
                currency=plan.currency,
            )
            db.add(purchase)
            await db.flush()
            session = (
                await sessions.create_for_purchase(
                    db, user_id=user_id, purchase_id=purchase.id, plan=plan, activation_days=30
                )
            ).session
            for name, value in changes.items():
                setattr(session, name, value)
            return session

    return _make


@pytest.fixture
def make_gateway(ctx: AppContext) -> MakeGateway:
    async def _make(
        name: str = "eu-west-1",
        region: str = "eu-west",
        endpoint: str = "gw1.example.net:51820",
        capacity: int | None = None,
    ) -> RegisteredGateway:
        async with ctx.db.transaction() as db:
            gateway, token = await gateways.register(
                db,
                ctx.secrets,
                ctx.settings,
                name=name,
                region_code=region,
                endpoint=endpoint,
                capacity=capacity,
            )
            return RegisteredGateway(
                gateway.id, gateway.name, region, gateway.endpoint, gateway.public_key, token
            )

    return _make


@pytest.fixture
async def gateway(make_gateway: MakeGateway) -> RegisteredGateway:
    return await make_gateway()


async def generate(
    client: httpx.AsyncClient, who: Owner, session_id: str, **fields: Any
) -> httpx.Response:
    return await client.post(
        "/api/connect/generate-profile",
        json={"session_id": session_id, **fields},
        headers=who.headers,
    )


async def desired_peers(client: httpx.AsyncClient, gw: RegisteredGateway) -> list[dict[str, Any]]:
    response = await client.get(
        "/api/gateway/v1/desired-state", headers={"Authorization": f"Bearer {gw.token}"}
    )
    assert response.status_code == 200, response.text
    peers: list[dict[str, Any]] = response.json()["peers"]
    return peers


async def gateway_row(ctx: AppContext, gateway_id: str) -> Gateway:
    async with ctx.db.transaction() as db:
        row = await db.get(Gateway, gateway_id)
        assert row is not None
        return row
