"""Queries of Web Push subscriptions and messages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control import outbox
from kswifi.control.db import is_postgresql
from kswifi.control.models import PushMessage, PushSubscription


def _insert(db: AsyncSession) -> Any:
    return postgresql_insert if is_postgresql(db) else sqlite_insert


async def upsert_subscription(db: AsyncSession, values: dict[str, Any]) -> None:
    """One row per endpoint: a browser subscribing again (or for another person) takes it."""
    table = cast(Table, PushSubscription.__table__)
    statement = _insert(db)(table).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.endpoint],
        set_={
            "user_id": statement.excluded.user_id,
            "p256dh": statement.excluded.p256dh,
            "auth": statement.excluded.auth,
        },
    )
    await db.execute(statement)


async def delete_subscription(db: AsyncSession, endpoint: str, user_id: str | None = None) -> int:
    statement = delete(PushSubscription).where(PushSubscription.endpoint == endpoint)
    if user_id is not None:
        statement = statement.where(PushSubscription.user_id == user_id)
    result = await db.execute(statement)
    return int(getattr(result, "rowcount", 0))


async def delete_subscriptions_of(db: AsyncSession, user_id: str) -> int:
    result = await db.execute(delete(PushSubscription).where(PushSubscription.user_id == user_id))
    return int(getattr(result, "rowcount", 0))


async def delete_subscription_by_id(db: AsyncSession, subscription_id: str) -> None:
    await db.execute(delete(PushSubscription).where(PushSubscription.id == subscription_id))


async def subscriptions_of(db: AsyncSession, user_id: str) -> Sequence[PushSubscription]:
    return list(
        await db.scalars(
            select(PushSubscription)
            .where(PushSubscription.user_id == user_id)
            .order_by(PushSubscription.created_at)
        )
    )


async def insert_messages(db: AsyncSession, rows: list[dict[str, Any]]) -> None:
    if rows:
        table = cast(Table, PushMessage.__table__)
        await db.execute(_insert(db)(table).values(rows).on_conflict_do_nothing())


async def claim(
    db: AsyncSession, token: str, now: datetime, until: datetime, limit: int
) -> list[tuple[PushMessage, PushSubscription]]:
    ids = await outbox.claim(db, PushMessage, token, now, until, limit)
    if not ids:
        return []
    rows = await db.execute(
        select(PushMessage, PushSubscription)
        .join(PushSubscription, PushSubscription.id == PushMessage.subscription_id)
        .where(PushMessage.id.in_(ids))
        .execution_options(populate_existing=True)
    )
    return [(message, subscription) for message, subscription in rows]


async def finish(db: AsyncSession, message_id: str, token: str, values: dict[str, Any]) -> bool:
    return await outbox.finish(db, PushMessage, message_id, token, values)
