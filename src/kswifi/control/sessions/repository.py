"""Queries of the sessions domain."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.models import LIVE_STATES, DataSession


async def get(db: AsyncSession, session_id: str, *, for_update: bool = False) -> DataSession | None:
    statement = select(DataSession).where(DataSession.id == session_id)
    if for_update:
        statement = statement.with_for_update()
    return await db.scalar(statement)


async def list_for_user(db: AsyncSession, user_id: str) -> list[DataSession]:
    rows = await db.scalars(
        select(DataSession)
        .where(DataSession.user_id == user_id)
        .order_by(DataSession.created_at.desc(), DataSession.id)
    )
    return list(rows)


async def add_usage(
    db: AsyncSession, session_id: str, rx_bytes: int, tx_bytes: int
) -> DataSession | None:
    """Add bytes in one UPDATE (no lost update between concurrent ingests), then re-read."""
    await db.execute(
        update(DataSession)
        .where(DataSession.id == session_id)
        .values(
            used_bytes=DataSession.used_bytes + rx_bytes + tx_bytes,
            rx_bytes=DataSession.rx_bytes + rx_bytes,
            tx_bytes=DataSession.tx_bytes + tx_bytes,
        )
        .execution_options(synchronize_session=False)
    )
    session = await get(db, session_id)
    if session is not None:
        await db.refresh(session)
    return session


async def list_due_for_expiry(db: AsyncSession, now: datetime, limit: int) -> list[DataSession]:
    """Live sessions whose validity or activation deadline has passed, oldest first."""
    rows = await db.scalars(
        select(DataSession)
        .where(
            DataSession.status.in_(LIVE_STATES),
            or_(
                DataSession.expires_at <= now,
                and_(DataSession.activated_at.is_(None), DataSession.activation_deadline <= now),
            ),
        )
        .order_by(DataSession.expires_at)
        .limit(limit)
    )
    return list(rows)
