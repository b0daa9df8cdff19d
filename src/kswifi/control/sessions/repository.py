"""Queries of the sessions domain."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.models import LIVE_STATES, DataSession, UsageRollup


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
        .with_for_update(skip_locked=True)  # replicas never end the same session twice
    )
    return list(rows)


async def add_to_rollup(
    db: AsyncSession, session_id: str, bucket_start: datetime, rx_bytes: int, tx_bytes: int
) -> None:
    """Add bytes to the session's minute bucket in one upsert (safe under concurrent ingest)."""
    values = {
        "session_id": session_id,
        "bucket_start": bucket_start,
        "rx_bytes": rx_bytes,
        "tx_bytes": tx_bytes,
    }
    insert = sqlite_insert if db.get_bind().dialect.name == "sqlite" else postgresql_insert
    statement = insert(UsageRollup).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=[UsageRollup.session_id, UsageRollup.bucket_start],
        set_={
            "rx_bytes": UsageRollup.rx_bytes + statement.excluded.rx_bytes,
            "tx_bytes": UsageRollup.tx_bytes + statement.excluded.tx_bytes,
        },
    )
    await db.execute(statement)


async def rollups(db: AsyncSession, session_id: str, since: datetime | None) -> list[UsageRollup]:
    statement = select(UsageRollup).where(UsageRollup.session_id == session_id)
    if since is not None:
        statement = statement.where(UsageRollup.bucket_start >= since)
    return list(await db.scalars(statement.order_by(UsageRollup.bucket_start)))
