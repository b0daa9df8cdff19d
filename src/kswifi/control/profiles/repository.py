"""Queries of the profiles domain: devices (Connect Profiles) and their setup links."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.db import is_postgresql
from kswifi.control.models import (
    DataSession,
    Device,
    DeviceStatus,
    Gateway,
    SetupLink,
)

ACTIVE = DeviceStatus.ACTIVE
REMOVED = DeviceStatus.REMOVED


async def get_device(
    db: AsyncSession, device_id: str, *, for_update: bool = False
) -> Device | None:
    """A device; `for_update` locks its row (PostgreSQL) and re-reads it."""
    if not for_update:
        return await db.get(Device, device_id)
    return await db.scalar(
        select(Device)
        .where(Device.id == device_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def active_devices_of_user(db: AsyncSession, user_id: str) -> list[Device]:
    """The person's installed devices, first installed first (read after their lock)."""
    rows = await db.scalars(
        select(Device)
        .where(Device.user_id == user_id, Device.status == ACTIVE)
        .order_by(Device.created_at, Device.id)
        .execution_options(populate_existing=True)
    )
    return list(rows)


async def session_of_device(db: AsyncSession, device_id: str) -> DataSession | None:
    """The session the device draws from now (None: the garden)."""
    return await db.scalar(
        select(DataSession)
        .join(Device, Device.session_id == DataSession.id)
        .where(Device.id == device_id)
    )


async def list_for_user(
    db: AsyncSession, user_id: str
) -> list[tuple[Device, Gateway, DataSession | None]]:
    """The person's installed devices with their gateway and the session each draws from."""
    rows = await db.execute(
        select(Device, Gateway, DataSession)
        .join(Gateway, Gateway.id == Device.gateway_id)
        .outerjoin(DataSession, DataSession.id == Device.session_id)
        .where(Device.user_id == user_id, Device.status == ACTIVE)
        .order_by(Device.created_at.desc(), Device.id)
    )
    return [(row[0], row[1], row[2]) for row in rows]


async def get_gateway(db: AsyncSession, gateway_id: str) -> Gateway | None:
    return await db.get(Gateway, gateway_id)


_devices = cast(Table, Device.__table__)
_links = cast(Table, SetupLink.__table__)
_INSERT_DEVICE = insert(_devices)
_INSERT_LINK = insert(_links)
# PostgreSQL: both rows in one statement (the device INSERT is a CTE the link selects from).
_new_device = (
    insert(_devices)
    .values({column.name: bindparam(column.name, type_=column.type) for column in _devices.c})
    .returning(_devices.c.id)
    .cte("new_device")
)
_LINK_COLUMNS = ("token_hash", "config_encrypted", "created_at", "expires_at", "used_at")
_INSERT_DEVICE_AND_LINK = (
    insert(_links)
    .from_select(
        ["device_id", *_LINK_COLUMNS],
        select(
            _new_device.c.id,
            *(bindparam(f"link_{name}", type_=_links.c[name].type) for name in _LINK_COLUMNS),
        ),
    )
    .add_cte(_new_device)
)


async def insert_device_and_link(
    db: AsyncSession, device: dict[str, Any], link: dict[str, Any]
) -> None:
    """A new device and its setup link: one statement on PostgreSQL (the caller holds the
    gateway row lock until the commit, so every round trip here counts), two on SQLite.
    `device` has a value for every column of `devices`, `link` for every column of
    `setup_links` but `device_id`."""
    if is_postgresql(db):
        params = {**device, **{f"link_{name}": link[name] for name in _LINK_COLUMNS}}
        await db.execute(_INSERT_DEVICE_AND_LINK, params)
        return
    await db.execute(_INSERT_DEVICE, device)
    await db.execute(_INSERT_LINK, {**link, "device_id": device["id"]})


def add_setup_link(
    db: AsyncSession,
    *,
    token_hash: str,
    device_id: str,
    config_encrypted: str,
    expires_at: datetime,
) -> SetupLink:
    link = SetupLink(
        token_hash=token_hash,
        device_id=device_id,
        config_encrypted=config_encrypted,
        expires_at=expires_at,
    )
    db.add(link)
    return link


async def get_setup_link(db: AsyncSession, token_hash: str) -> SetupLink | None:
    return await db.get(SetupLink, token_hash)


async def claim_setup_link(db: AsyncSession, token_hash: str, now: datetime) -> bool:
    """Mark an unused, unexpired link used in one conditional UPDATE: exactly one opener wins."""
    result = await db.execute(
        update(SetupLink)
        .where(
            SetupLink.token_hash == token_hash,
            SetupLink.used_at.is_(None),
            SetupLink.expires_at > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0) == 1


async def latest_live_setup_link(
    db: AsyncSession, device_id: str, now: datetime
) -> SetupLink | None:
    return await db.scalar(
        select(SetupLink)
        .where(SetupLink.device_id == device_id, SetupLink.expires_at > now)
        .order_by(SetupLink.expires_at.desc())
        .limit(1)
    )


async def delete_setup_links(db: AsyncSession, device_ids: Sequence[str]) -> None:
    """Drop the links (and the encrypted configs they hold) of these devices."""
    if device_ids:
        await db.execute(delete(SetupLink).where(SetupLink.device_id.in_(list(device_ids))))


async def delete_expired_setup_links(db: AsyncSession, now: datetime) -> int:
    result = await db.execute(delete(SetupLink).where(SetupLink.expires_at <= now))
    return int(getattr(result, "rowcount", 0) or 0)


async def forget_device_names(db: AsyncSession, user_id: str) -> None:
    """The names a person gave their devices are theirs: replaced (the rows stay, for the
    addresses they held and the books)."""
    await db.execute(
        update(Device)
        .where(Device.user_id == user_id)
        .values(device_name="Removed device", private_key_encrypted=None)
        .execution_options(synchronize_session=False)
    )
