"""Claim and settle rows of an outgoing queue (e-mail, Web Push, operator webhooks).

A queue's rows carry `status` ("queued" until due, "sending" while claimed), `attempts`,
`next_attempt_at`, `claim_token` and `claimed_until`. A worker claims due rows, and rows
whose claim lapsed (the worker that held them died mid-send), in one transaction; sends them
outside any transaction; then settles each only while it still holds the claim. PostgreSQL's
`SKIP LOCKED` keeps two workers off the same rows; SQLite has one writer, and the conditional
update re-checks what the select saw.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.db import is_postgresql
from kswifi.control.retry import MAX_ATTEMPTS, retry_delay

QUEUED = "queued"
SENDING = "sending"


Row = TypeVar("Row")


def claimable(model: type[Any], now: datetime) -> ColumnElement[bool]:
    return or_(
        and_(model.status == QUEUED, model.next_attempt_at <= now),
        and_(model.status == SENDING, model.claimed_until < now),
    )


async def claim(
    db: AsyncSession, model: type[Row], token: str, now: datetime, until: datetime, limit: int
) -> list[str]:
    """Mark up to `limit` due rows of `model` as claimed by `token`; their ids."""
    table: Any = model
    pick = select(table.id).where(claimable(table, now)).order_by(table.next_attempt_at)
    pick = pick.limit(limit)
    if is_postgresql(db):
        pick = pick.with_for_update(skip_locked=True)
    ids = list(await db.scalars(pick))
    if not ids:
        return []
    await db.execute(
        update(table)
        .where(table.id.in_(ids), claimable(table, now))
        .values(status=SENDING, claim_token=token, claimed_until=until, attempts=table.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    return list(
        await db.scalars(select(table.id).where(table.claim_token == token, table.id.in_(ids)))
    )


async def finish(
    db: AsyncSession, model: type[Row], row_id: str, token: str, values: dict[str, Any]
) -> bool:
    """Record a send's outcome, only if `token` still holds the claim."""
    table: Any = model
    result = await db.execute(
        update(table)
        .where(table.id == row_id, table.claim_token == token)
        .values(claim_token=None, claimed_until=None, **values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


FAILED = "failed"


def after_failure(attempts: int, error: str, now: datetime) -> tuple[dict[str, Any], bool]:
    """What a failed send leaves on its row (for `finish`), and whether it was the last try:
    queued again after `retry_delay`, or given up after `MAX_ATTEMPTS`."""
    values: dict[str, Any] = {"last_error": error[:500]}
    give_up = attempts >= MAX_ATTEMPTS
    if give_up:
        values["status"] = FAILED
    else:
        values["status"] = QUEUED
        values["next_attempt_at"] = now + retry_delay(attempts)
    return values, give_up
