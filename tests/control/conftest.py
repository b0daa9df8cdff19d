"""Sessions made straight through the ORM, for tests that need one without buying it."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import select

from kswifi.control.deps import AppContext
from kswifi.control.models import DataSession, Plan, Purchase, User
from kswifi.control.security import hash_password
from kswifi.control.sessions import service

MakeSession = Callable[..., Awaitable[DataSession]]


@pytest.fixture
def make_session(ctx: AppContext) -> MakeSession:
    async def _make(user_id: str | None = None, plan_code: str = "premium") -> DataSession:
        async with ctx.db.transaction() as db:
            if user_id is None:
                owner = User(
                    email=f"{uuid.uuid4().hex}@example.com", password_hash=hash_password("x" * 12)
                )
                db.add(owner)
                await db.flush()
                user_id = owner.id
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
            new = await service.create_for_purchase(
                db, user_id=user_id, purchase_id=purchase.id, plan=plan, activation_days=30
            )
            return new.session

    return _make
