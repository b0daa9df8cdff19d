"""Queries of the plans domain."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.audit import add_audit as add_audit  # the domain's audit writer
from kswifi.control.models import Plan


async def get_by_code(db: AsyncSession, code: str) -> Plan | None:
    result: Plan | None = await db.scalar(select(Plan).where(Plan.code == code))
    return result


async def get_by_id(db: AsyncSession, plan_id: str) -> Plan | None:
    return await db.get(Plan, plan_id)


async def list_plans(db: AsyncSession, *, active_only: bool) -> list[Plan]:
    query = select(Plan).order_by(Plan.price_cents, Plan.data_limit_bytes, Plan.code)
    if active_only:
        query = query.where(Plan.is_active.is_(True))
    return list(await db.scalars(query))


def add(db: AsyncSession, plan: Plan) -> None:
    db.add(plan)
