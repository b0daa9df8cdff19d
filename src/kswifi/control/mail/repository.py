"""Queries of the mail queue."""

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
from kswifi.control.models import MailStatus, OutgoingMail


async def insert(db: AsyncSession, values: dict[str, Any]) -> bool:
    """Queue one message; False (nothing written) when its `dedupe_key` was queued before."""
    dialect_insert = postgresql_insert if is_postgresql(db) else sqlite_insert
    table = cast(Table, OutgoingMail.__table__)
    statement = dialect_insert(table).values(**values).on_conflict_do_nothing()
    result = await db.execute(statement)
    return bool(getattr(result, "rowcount", 0))


async def claim(
    db: AsyncSession, token: str, now: datetime, until: datetime, limit: int
) -> Sequence[OutgoingMail]:
    """Due messages (or ones whose claim lapsed), now claimed by `token` (see `outbox`)."""
    ids = await outbox.claim(db, OutgoingMail, token, now, until, limit)
    if not ids:
        return []
    return list(
        await db.scalars(
            select(OutgoingMail)
            .where(OutgoingMail.id.in_(ids))
            .execution_options(populate_existing=True)
        )
    )


async def finish(db: AsyncSession, mail_id: str, token: str, values: dict[str, Any]) -> bool:
    """Record the outcome of a send, only if this worker still holds the claim."""
    return await outbox.finish(db, OutgoingMail, mail_id, token, values)


async def recent(
    db: AsyncSession, *, limit: int, offset: int = 0, status: str | None = None
) -> Sequence[OutgoingMail]:
    statement = select(OutgoingMail).order_by(OutgoingMail.created_at.desc(), OutgoingMail.id)
    if status:
        statement = statement.where(OutgoingMail.status == status)
    return list(await db.scalars(statement.limit(limit).offset(offset)))


async def get(db: AsyncSession, mail_id: str) -> OutgoingMail | None:
    return await db.get(OutgoingMail, mail_id)


async def of_user(db: AsyncSession, user_id: str) -> Sequence[OutgoingMail]:
    return list(
        await db.scalars(
            select(OutgoingMail)
            .where(OutgoingMail.user_id == user_id)
            .order_by(OutgoingMail.created_at)
        )
    )


async def forget_user(db: AsyncSession, user_id: str) -> int:
    """Delete every message to a person (their account is being deleted)."""
    result = await db.execute(delete(OutgoingMail).where(OutgoingMail.user_id == user_id))
    return int(getattr(result, "rowcount", 0))


async def purge_sent_before(db: AsyncSession, before: datetime) -> int:
    result = await db.execute(
        delete(OutgoingMail).where(
            OutgoingMail.status.in_([MailStatus.SENT, MailStatus.FAILED]),
            OutgoingMail.created_at < before,
        )
    )
    return int(getattr(result, "rowcount", 0))
