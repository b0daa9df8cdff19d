"""Fixtures of the regions tests: a proxy that reports the client's country, admin accounts,
gateways registered straight through the gateways service."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from sqlalchemy import update

from kswifi.control.config import Settings
from kswifi.control.deps import AppContext
from kswifi.control.gateways import service as gateways
from kswifi.control.models import Gateway, User, utcnow
from kswifi.control.security import hash_password

COUNTRY_HEADER = "X-Test-Country"
ADDRESS_HEADER = "X-Forwarded-For"
# Public addresses whose registry allocation is stable: Google (US), BT (GB), APNIC (JP).
US_ADDRESS = "8.8.8.8"
GB_ADDRESS = "81.2.69.160"
JP_ADDRESS = "1.0.16.1"

AddGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared settings, behind a proxy we trust to tell the client's country/address."""
    return settings.model_copy(
        update={"client_country_header": COUNTRY_HEADER, "client_address_header": ADDRESS_HEADER}
    )


@functools.cache
def _password_hash() -> str:
    return hash_password("x" * 12)  # argon2 is slow on purpose: once per run


@pytest.fixture
async def admin_headers(ctx: AppContext) -> dict[str, str]:
    async with ctx.db.transaction() as db:
        user = User(
            email=f"ops-{uuid.uuid4().hex[:8]}@example.com",
            password_hash=_password_hash(),
            is_admin=True,
        )
        db.add(user)
        await db.flush()
        user_id = user.id
    token = ctx.secrets.issue_access_token(user_id, True, timedelta(minutes=15))
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def add_gateway(ctx: AppContext) -> AddGateway:
    """Register a gateway; `online=True` gives it a fresh heartbeat, `online=False` an old
    one (known offline), `online=None` none at all (never seen)."""
    counter = iter(range(1, 1000))

    async def _add(
        region: str, *, online: bool | None = True, capacity: int | None = None
    ) -> Gateway:
        number = next(counter)
        async with ctx.db.transaction() as db:
            gateway, _token = await gateways.register(
                db,
                ctx.secrets,
                ctx.settings,
                name=f"{region}-{number}",
                region_code=region,
                endpoint=f"203.0.113.{number}:51820",
                capacity=capacity,
            )
            if online is not None:
                seen = utcnow() - timedelta(seconds=1 if online else 3600)
                await db.execute(
                    update(Gateway)
                    .where(Gateway.id == gateway.id)
                    .values(is_online=online, last_heartbeat_at=seen)
                )
            return gateway

    return _add
