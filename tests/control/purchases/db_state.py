"""Reading the database from the purchases tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from kswifi.control.deps import AppContext
from kswifi.control.models import DataSession, ProviderEvent, Purchase, Voucher


async def count(ctx: AppContext, model: Any) -> int:
    async with ctx.db.transaction() as db:
        return int(await db.scalar(select(func.count()).select_from(model)) or 0)


async def state(ctx: AppContext) -> dict[str, int]:
    """How many purchases, sessions and handled provider events there are."""
    return {
        "purchases": await count(ctx, Purchase),
        "sessions": await count(ctx, DataSession),
        "events": await count(ctx, ProviderEvent),
    }


async def voucher(ctx: AppContext, code: str) -> Voucher:
    async with ctx.db.transaction() as db:
        found = await db.get(Voucher, code)
        assert found is not None
        return found


async def session_of(ctx: AppContext, purchase_id: str) -> DataSession | None:
    async with ctx.db.transaction() as db:
        result: DataSession | None = await db.scalar(
            select(DataSession).where(DataSession.purchase_id == purchase_id)
        )
        return result
