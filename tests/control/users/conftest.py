"""Fixtures of the users domain: a low login limit, a controllable clock, DB helpers."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from kswifi.control.config import Settings
from kswifi.control.deps import AppContext
from kswifi.control.models import RefreshToken, User
from kswifi.control.users.ratelimit import AuthRateLimits

LOGIN_LIMIT = 3


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"login_attempts_per_minute": LOGIN_LIMIT})


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(app: FastAPI, settings: Settings) -> FakeClock:
    """Installs the app's auth rate limiters on a fake clock."""
    fake = FakeClock()
    app.state.kswifi_auth_rate_limits = AuthRateLimits.from_settings(settings, clock=fake)
    return fake


async def refresh_rows(ctx: AppContext, user_id: str) -> list[RefreshToken]:
    async with ctx.db.transaction() as db:
        rows = await db.scalars(
            select(RefreshToken)
            .where(RefreshToken.user_id == user_id)
            .order_by(RefreshToken.created_at)
        )
        return list(rows.all())


async def user_row(ctx: AppContext, email: str) -> User | None:
    async with ctx.db.transaction() as db:
        return await db.scalar(select(User).where(User.email == email))


def signed(ctx: AppContext, claims: dict[str, Any], algorithm: str = "HS256") -> str:
    """A token signed with the app's own access-token key (to forge wrong-type tokens)."""
    return jwt.encode(claims, ctx.secrets._signing_key, algorithm=algorithm)
