"""Queries of the regions domain."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.audit import add_audit as add_audit  # the domain's audit writer
from kswifi.control.models import Device, DeviceStatus, Gateway, Region


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


async def claim_silent_gateways(
    db: AsyncSession, seen_before: datetime
) -> list[tuple[str, str, str]]:
    """Mark online gateways silent since `seen_before` offline; (id, name, region) of each.

    One conditional UPDATE: on PostgreSQL a replica running it at the same moment waits for
    the row, re-checks `is_online` and skips it, so each gateway goes offline exactly once.
    """
    rows = await db.execute(
        update(Gateway)
        .where(
            Gateway.is_online.is_(True),
            or_(Gateway.last_heartbeat_at.is_(None), Gateway.last_heartbeat_at < seen_before),
        )
        .values(is_online=False)
        .returning(Gateway.id, Gateway.name, Gateway.region_code)
        .execution_options(synchronize_session=False)
    )
    return [(gateway_id, name, region) for gateway_id, name, region in rows]


async def active_devices_on(
    db: AsyncSession, gateway_ids: list[str]
) -> list[tuple[str, str | None, str]]:
    """(gateway id, session id or None, device id) of every active device on the gateways."""
    if not gateway_ids:
        return []
    rows = await db.execute(
        select(Device.gateway_id, Device.session_id, Device.id)
        .where(Device.gateway_id.in_(gateway_ids), Device.status == DeviceStatus.ACTIVE)
        .order_by(Device.session_id, Device.id)
    )
    return [(gateway_id, session_id, device_id) for gateway_id, session_id, device_id in rows]
