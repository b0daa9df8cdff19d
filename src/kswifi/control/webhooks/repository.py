"""Queries of operator webhooks."""

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
from kswifi.control.models import WebhookDelivery, WebhookEvent


def add_event(db: AsyncSession, event: WebhookEvent) -> None:
    db.add(event)


async def claim_unfanned(db: AsyncSession, now: datetime, limit: int) -> Sequence[WebhookEvent]:
    """Events not yet fanned out, now marked as fanned out by this transaction (a replica
    that races for the same one skips it: PostgreSQL `SKIP LOCKED`, SQLite one writer)."""
    pick = (
        select(WebhookEvent)
        .where(WebhookEvent.fanned_out_at.is_(None))
        .order_by(WebhookEvent.created_at)
        .limit(limit)
    )
    if is_postgresql(db):
        pick = pick.with_for_update(skip_locked=True)
    events = list(await db.scalars(pick))
    for event in events:
        event.fanned_out_at = now
    await db.flush()
    return events


async def add_deliveries(db: AsyncSession, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    dialect_insert = postgresql_insert if is_postgresql(db) else sqlite_insert
    table = cast(Table, WebhookDelivery.__table__)
    await db.execute(dialect_insert(table).values(rows).on_conflict_do_nothing())


async def claim(
    db: AsyncSession, token: str, now: datetime, until: datetime, limit: int
) -> list[tuple[WebhookDelivery, WebhookEvent]]:
    """Due deliveries (or ones whose claim lapsed), now claimed by `token` (see `outbox`)."""
    ids = await outbox.claim(db, WebhookDelivery, token, now, until, limit)
    if not ids:
        return []
    rows = await db.execute(
        select(WebhookDelivery, WebhookEvent)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.id.in_(ids))
        .execution_options(populate_existing=True)
    )
    return [(delivery, event) for delivery, event in rows]


async def finish(db: AsyncSession, delivery_id: str, token: str, values: dict[str, Any]) -> bool:
    return await outbox.finish(db, WebhookDelivery, delivery_id, token, values)


async def recent(
    db: AsyncSession, *, limit: int, offset: int = 0, status: str | None = None
) -> list[tuple[WebhookDelivery, WebhookEvent]]:
    statement = (
        select(WebhookDelivery, WebhookEvent)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id)
    )
    if status:
        statement = statement.where(WebhookDelivery.status == status)
    rows = await db.execute(statement.limit(limit).offset(offset))
    return [(delivery, event) for delivery, event in rows]


async def purge_before(db: AsyncSession, before: datetime) -> int:
    result = await db.execute(
        delete(WebhookEvent).where(
            WebhookEvent.created_at < before, WebhookEvent.fanned_out_at.is_not(None)
        )
    )
    return int(getattr(result, "rowcount", 0))
