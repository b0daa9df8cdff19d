"""Fixtures of the hardening tests: a populated world (owners, strangers, an operator, gateways).

Everything is made through the services and the API of the app under test, so the world is
the same on SQLite and PostgreSQL. Each role gets its own client address: the per-address
limits of one role never spill into another's answers.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import select

from kswifi.control import security
from kswifi.control.config import Settings
from kswifi.control.deps import WEB_ACCESS_COOKIE, AppContext
from kswifi.control.gateways import service as gateways
from kswifi.control.models import Device, User
from kswifi.control.security import hash_password, new_opaque_token
from kswifi.control.users import service as users
from kswifi.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION

PASSWORD = "hardening correct horse 42"
STRIPE_WEBHOOK_SECRET = "whsec_hardening_" + "s3cr3t" * 4
CSRF_COOKIE = "kswifi_csrf"


@functools.cache
def password_hash() -> str:
    """Hashed once per run: argon2 is slow on purpose, and every account shares the password."""
    return hash_password(PASSWORD)


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """The matrix registers and logs in dozens of times: argon2id with minimal cost keeps it
    quick. What is hashed, stored and compared is unchanged; only the work factor is lower."""
    monkeypatch.setattr(security, "_password_hasher", PasswordHasher(time_cost=1, memory_cost=64))


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Short usage streams (the matrix reads one to its end) and a Stripe signing secret."""
    return settings.model_copy(
        update={
            "sse_max_seconds": 0.3,
            "stripe_webhook_secret": SecretStr(STRIPE_WEBHOOK_SECRET),
        }
    )


@dataclass
class Actor:
    """A user with live tokens; `headers` for the API, `cookie()` for the web pages."""

    id: str
    email: str
    is_admin: bool
    access_token: str
    refresh_token: str
    csrf_nonce: str = field(default_factory=lambda: new_opaque_token(16))

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@dataclass
class Gw:
    id: str
    name: str
    token: str
    region: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class OwnedDevice:
    id: str
    public_key: str
    ipv4: str
    setup_token: str
    download_token: str


@dataclass
class World:
    """Who is who. `owner` holds the resources the matrix aims at; `other` holds the same
    kinds of things of their own; `victim` is what operator actions are tried on."""

    ctx: AppContext
    owner: Actor
    other: Actor
    admin: Actor
    victim: Actor
    gw_a: Gw  # carries the owner's devices
    gw_b: Gw  # carries the other user's device
    gw_c: Gw  # spare, for operator actions
    owner_session: str
    owner_purchase: str
    owner_phone: OwnedDevice
    owner_tablet: OwnedDevice
    other_session: str
    other_device: str
    victim_sessions: list[str]

    def owner_markers(self) -> dict[str, str]:
        """Strings that identify the owner's data: none may reach anyone else."""
        return {
            "owner id": self.owner.id,
            "owner email": self.owner.email,
            "owner session": self.owner_session,
            "owner purchase": self.owner_purchase,
            "owner phone id": self.owner_phone.id,
            "owner phone key": self.owner_phone.public_key,
            "owner tablet id": self.owner_tablet.id,
            "owner tablet key": self.owner_tablet.public_key,
        }

    def cookie(self, actor: Actor | None, nonce: str) -> str:
        parts = [f"{CSRF_COOKIE}={nonce}"]
        if actor is not None:
            parts.append(f"{WEB_ACCESS_COOKIE}={actor.access_token}")
        return "; ".join(parts)

    def csrf(self, nonce: str) -> str:
        return self.ctx.secrets.sign(f"csrf:{nonce}")


def client_for(app: FastAPI, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver",
        timeout=60,
        headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION)},
    )


async def make_actor(ctx: AppContext, *, is_admin: bool = False, label: str = "user") -> Actor:
    email = f"{label}-{uuid.uuid4().hex[:10]}@example.com"
    async with ctx.db.transaction() as db:
        user = User(email=email, password_hash=password_hash(), is_admin=is_admin)
        db.add(user)
        await db.flush()
        tokens = await users.issue_tokens(db, ctx.secrets, ctx.settings, user)
        return Actor(user.id, email, is_admin, tokens.access_token, tokens.refresh_token)


async def make_gateway(ctx: AppContext, region: str) -> Gw:
    name = f"gw-{region}-{uuid.uuid4().hex[:6]}"
    async with ctx.db.transaction() as db:
        gateway, token = await gateways.register(
            db,
            ctx.secrets,
            ctx.settings,
            name=name,
            region_code=region,
            endpoint=f"{name}.example.net:51820",
        )
        return Gw(gateway.id, gateway.name, token, region)


async def buy(client: httpx.AsyncClient, actor: Actor, plan: str = "premium") -> dict[str, Any]:
    response = await client.post(
        "/api/purchases", json={"plan_code": plan, "payment_method": "dev"}, headers=actor.headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def generate(
    client: httpx.AsyncClient,
    actor: Actor,
    session_id: str,
    region: str,
    device: str,
    *,
    rotate: bool = False,
) -> dict[str, Any]:
    response = await client.post(
        "/api/connect/generate-profile",
        json={"session_id": session_id, "region": region, "device_name": device, "rotate": rotate},
        headers=actor.headers,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def owned_device(ctx: AppContext, profile: dict[str, Any]) -> OwnedDevice:
    async with ctx.db.transaction() as db:
        device = await db.scalar(select(Device).where(Device.id == profile["connect_id"]))
        assert device is not None
        return OwnedDevice(
            id=device.id,
            public_key=device.public_key,
            ipv4=device.ipv4,
            setup_token=profile["setup_url"].rsplit("/", 1)[1],
            download_token=profile["config_url"].split("?t=", 1)[1],
        )


async def build_world(ctx: AppContext, client: httpx.AsyncClient) -> World:
    gw_a = await make_gateway(ctx, "eu-west")
    gw_b = await make_gateway(ctx, "us-east")
    gw_c = await make_gateway(ctx, "ap-southeast")
    owner = await make_actor(ctx, label="owner")
    other = await make_actor(ctx, label="other")
    admin = await make_actor(ctx, is_admin=True, label="admin")
    victim = await make_actor(ctx, label="victim")

    bought = await buy(client, owner, "ultra")  # three devices
    phone = await generate(client, owner, bought["session_id"], "eu-west", "phone")
    tablet = await generate(client, owner, bought["session_id"], "eu-west", "tablet")
    other_bought = await buy(client, other)
    other_profile = await generate(client, other, other_bought["session_id"], "us-east", "phone")
    victim_sessions = [(await buy(client, victim))["session_id"] for _ in range(2)]
    return World(
        ctx=ctx,
        owner=owner,
        other=other,
        admin=admin,
        victim=victim,
        gw_a=gw_a,
        gw_b=gw_b,
        gw_c=gw_c,
        owner_session=bought["session_id"],
        owner_purchase=bought["id"],
        owner_phone=await owned_device(ctx, phone),
        owner_tablet=await owned_device(ctx, tablet),
        other_session=other_bought["session_id"],
        other_device=other_profile["connect_id"],
        victim_sessions=victim_sessions,
    )


@pytest.fixture
async def world(ctx: AppContext, client: httpx.AsyncClient) -> World:
    return await build_world(ctx, client)


@pytest.fixture
async def role_clients(app: FastAPI) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """One client per role, each from its own address."""
    roles = ("anon", "gateway", "other", "owner", "admin")
    clients = {role: client_for(app, f"192.0.2.{10 + i}") for i, role in enumerate(roles)}
    try:
        yield clients
    finally:
        for http in clients.values():
            await http.aclose()
