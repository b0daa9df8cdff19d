"""Queries of the admin domain: searches and reports across accounts, sessions and sales."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Date, cast, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.audit import add_audit as add_audit  # the domain's audit writer
from kswifi.control.models import (
    LIVE_STATES,
    AuditEntry,
    DataSession,
    Purchase,
    UsageRollup,
    User,
)


def _like_pattern(text: str) -> str:
    """`%text%` with the user's own % and _ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def search_sessions(
    db: AsyncSession, *, query: str | None, status: str | None, limit: int, offset: int
) -> tuple[list[tuple[DataSession, str]], int]:
    """Sessions with their owner's email, newest first, and how many match in all."""
    conditions: list[ColumnElement[bool]] = []
    if query:
        text = query.strip().lower()
        matches = [
            DataSession.id == text,
            func.lower(User.email).like(_like_pattern(text), escape="\\"),
        ]
        if text.isalnum():  # ids are hex: a prefix of one (only ever letters and digits)
            matches.append(DataSession.id.like(f"{text}%"))
        conditions.append(or_(*matches))
    if status:
        conditions.append(DataSession.status == status)
    base = select(DataSession, User.email).join(User, User.id == DataSession.user_id)
    rows = await db.execute(
        base.where(*conditions)
        .order_by(DataSession.created_at.desc(), DataSession.id)
        .limit(limit)
        .offset(offset)
    )
    total = await db.scalar(
        select(func.count())
        .select_from(DataSession)
        .join(User, User.id == DataSession.user_id)
        .where(*conditions)
    )
    return [(session, email) for session, email in rows.all()], int(total or 0)


async def search_users(
    db: AsyncSession, *, query: str | None, limit: int, offset: int
) -> tuple[list[tuple[User, int, int]], int]:
    """Accounts, newest first, each with its number of sessions and of live sessions."""
    conditions: list[ColumnElement[bool]] = []
    if query:
        text = query.strip().lower()
        conditions.append(
            or_(User.id == text, func.lower(User.email).like(_like_pattern(text), escape="\\"))
        )
    counts = (
        select(
            DataSession.user_id.label("user_id"),
            func.count().label("sessions"),
            func.count().filter(DataSession.status.in_(LIVE_STATES)).label("live"),
        )
        .group_by(DataSession.user_id)
        .subquery()
    )
    rows = await db.execute(
        select(User, func.coalesce(counts.c.sessions, 0), func.coalesce(counts.c.live, 0))
        .outerjoin(counts, counts.c.user_id == User.id)
        .where(*conditions)
        .order_by(User.created_at.desc(), User.id)
        .limit(limit)
        .offset(offset)
    )
    total = await db.scalar(select(func.count()).select_from(User).where(*conditions))
    return [(user, int(n), int(live)) for user, n, live in rows.all()], int(total or 0)


def _utc_day(db: AsyncSession, column: Any) -> Any:
    """The UTC calendar day of a timestamp column, on SQLite (naive UTC) and PostgreSQL."""
    if db.get_bind().dialect.name == "sqlite":
        return func.date(column)
    return cast(func.timezone("UTC", column), Date)


def as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


async def sales_per_day(
    db: AsyncSession, since: datetime, until: datetime
) -> list[tuple[date, str, int, int]]:
    """(day, currency, paid purchases, amount in cents) of purchases paid in [since, until)."""
    day = _utc_day(db, Purchase.paid_at).label("day")
    rows = await db.execute(
        select(
            day, Purchase.currency, func.count(), func.coalesce(func.sum(Purchase.amount_cents), 0)
        )
        .where(Purchase.status == "paid", Purchase.paid_at >= since, Purchase.paid_at < until)
        .group_by(day, Purchase.currency)
        .order_by(day, Purchase.currency)
    )
    return [(as_date(d), currency, int(n), int(cents)) for d, currency, n, cents in rows.all()]


async def data_per_day(
    db: AsyncSession, since: datetime, until: datetime
) -> list[tuple[date, int]]:
    """(day, bytes served) from the per-minute usage rollups in [since, until)."""
    day = _utc_day(db, UsageRollup.bucket_start).label("day")
    rows = await db.execute(
        select(day, func.coalesce(func.sum(UsageRollup.rx_bytes + UsageRollup.tx_bytes), 0))
        .where(UsageRollup.bucket_start >= since, UsageRollup.bucket_start < until)
        .group_by(day)
        .order_by(day)
    )
    return [(as_date(d), int(total)) for d, total in rows.all()]


async def list_audit(
    db: AsyncSession, *, action: str | None, actor: str | None, limit: int, offset: int
) -> tuple[list[AuditEntry], int]:
    conditions: list[ColumnElement[bool]] = []
    if action:
        conditions.append(AuditEntry.action.like(_like_pattern(action), escape="\\"))
    if actor:
        conditions.append(
            func.lower(AuditEntry.actor).like(_like_pattern(actor.lower()), escape="\\")
        )
    rows = await db.scalars(
        select(AuditEntry)
        .where(*conditions)
        .order_by(AuditEntry.created_at.desc(), AuditEntry.id)
        .limit(limit)
        .offset(offset)
    )
    total = await db.scalar(select(func.count()).select_from(AuditEntry).where(*conditions))
    return list(rows), int(total or 0)
