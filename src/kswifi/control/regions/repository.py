"""Queries of the regions domain."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.models import AuditEntry, Region


async def get(db: AsyncSession, code: str) -> Region | None:
    return await db.get(Region, code)


async def list_all(db: AsyncSession, *, active_only: bool = False) -> list[Region]:
    query = select(Region).order_by(Region.code)
    if active_only:
        query = query.where(Region.is_active.is_(True))
    return list(await db.scalars(query))


async def codes(db: AsyncSession) -> set[str]:
    """Codes of the active regions."""
    return set(await db.scalars(select(Region.code).where(Region.is_active.is_(True))))


def add(db: AsyncSession, region: Region) -> None:
    db.add(region)


def add_audit(db: AsyncSession, *, actor: str, action: str, target: str, detail: str) -> None:
    db.add(AuditEntry(actor=actor, action=action, target=target, detail=detail[:2048]))
