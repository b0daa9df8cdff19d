"""Fixtures of the gateways tests: gateways, sessions and devices made directly in the database.

Sessions and devices are written through the ORM (not the purchase or profile APIs), so these
tests depend only on the gateways domain and the sessions service.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import select, update

from kswifi.control.deps import AppContext
from kswifi.control.gateways import addresses as gateway_addresses
from kswifi.control.gateways import desired as gateway_desired
from kswifi.control.gateways import service
from kswifi.control.models import DataSession, Device, Gateway, Plan, Purchase, User, utcnow


@dataclass
class RegisteredGateway:
    id: str
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class MadeDevice:
    id: str
    session_id: str
    gateway_id: str
    public_key: str
    preshared_key: str
    host_index: int
    ipv4: str
    ipv6: str


def new_key() -> str:
    raw = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


def public_key_of(private_key: str) -> str:
    key = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key))
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


class World:
    """Builds gateways, sessions and devices in their own committed transactions."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    async def gateway(
        self, name: str | None = None, region: str = "eu-west", capacity: int | None = None
    ) -> RegisteredGateway:
        name = name or f"gw-{uuid.uuid4().hex[:8]}"
        async with self.ctx.db.transaction() as db:
            gateway, token = await service.register(
                db,
                self.ctx.secrets,
                self.ctx.settings,
                name=name,
                region_code=region,
                endpoint=f"{name}.example.net:51820",
                capacity=capacity,
            )
            return RegisteredGateway(gateway.id, gateway.name, token)

    async def session(
        self,
        *,
        limit_bytes: int = 10_000_000,
        speed_mbps: int = 10,
        status: str = "active",
        expires_at: datetime | None = None,
        used_bytes: int = 0,
    ) -> str:
        now = utcnow()
        async with self.ctx.db.transaction() as db:
            user = User(
                email=f"u-{uuid.uuid4().hex[:10]}@example.com", password_hash="not-used-here"
            )
            plan = await db.scalar(select(Plan).where(Plan.code == "basic"))
            assert plan is not None
            db.add(user)
            await db.flush()
            purchase = Purchase(
                user_id=user.id,
                plan_id=plan.id,
                provider="dev",
                status="paid",
                amount_cents=0,
                currency="USD",
                paid_at=now,
            )
            db.add(purchase)
            await db.flush()
            session = DataSession(
                user_id=user.id,
                plan_id=plan.id,
                purchase_id=purchase.id,
                plan_code=plan.code,
                plan_name=plan.name,
                status=status,
                data_limit_bytes=limit_bytes,
                speed_mbps=speed_mbps,
                validity_seconds=7 * 86_400,
                max_devices=3,
                used_bytes=used_bytes,
                activation_deadline=now + timedelta(days=30),
                activated_at=now,
                expires_at=expires_at or now + timedelta(days=7),
            )
            db.add(session)
            await db.flush()
            return session.id

    async def device(self, session_id: str, gateway_id: str) -> MadeDevice:
        private_key, preshared_key = new_key(), new_key()
        public_key = public_key_of(private_key)
        now = utcnow()
        async with self.ctx.db.transaction() as db:
            gateway = await db.get(Gateway, gateway_id)
            session = await db.get(DataSession, session_id)
            assert gateway is not None and session is not None
            host_index, ipv4, ipv6 = await gateway_addresses.allocate_host(
                db, gateway, self.ctx.settings, now
            )
            device = Device(
                session_id=session_id,
                user_id=session.user_id,
                gateway_id=gateway_id,
                public_key=public_key,
                preshared_key_encrypted=self.ctx.secrets.encrypt(preshared_key),
                host_index=host_index,
                ipv4=ipv4,
                ipv6=ipv6,
            )
            db.add(device)
            await db.flush()
            await gateway_desired.bump_revision(
                db, [gateway_id], self.ctx.events, [session.user_id]
            )
            return MadeDevice(
                device.id, session_id, gateway_id, public_key, preshared_key, host_index, ipv4, ipv6
            )

    async def get_session(self, session_id: str) -> DataSession:
        async with self.ctx.db.transaction() as db:
            session = await db.get(DataSession, session_id)
            assert session is not None
            return session

    async def get_gateway(self, gateway_id: str) -> Gateway:
        async with self.ctx.db.transaction() as db:
            gateway = await db.get(Gateway, gateway_id)
            assert gateway is not None
            return gateway

    async def get_device(self, device_id: str) -> Device:
        async with self.ctx.db.transaction() as db:
            device = await db.get(Device, device_id)
            assert device is not None
            return device


@pytest.fixture
def world(ctx: AppContext) -> World:
    return World(ctx)


@pytest.fixture
async def admin_headers(ctx: AppContext, client: httpx.AsyncClient) -> dict[str, str]:
    from tests.conftest import register_and_login

    admin = await register_and_login(client)
    async with ctx.db.transaction() as db:
        await db.execute(update(User).where(User.email == admin.email).values(is_admin=True))
    return admin.headers
