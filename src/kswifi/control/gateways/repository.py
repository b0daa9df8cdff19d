"""Queries of the gateways domain."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.models import (
    LIVE_STATES,
    AddressRelease,
    AuditEntry,
    DataSession,
    Device,
    Gateway,
    GatewayLease,
    Region,
    UsageBatch,
)

_INSERT_CHUNK = 1000  # rows per INSERT: stays far below the databases' bound-parameter limits


async def get(db: AsyncSession, gateway_id: str) -> Gateway | None:
    return await db.get(Gateway, gateway_id)


async def get_by_name(db: AsyncSession, name: str) -> Gateway | None:
    return await db.scalar(select(Gateway).where(Gateway.name == name))


async def get_by_token_hash(db: AsyncSession, token_hash: str) -> Gateway | None:
    return await db.scalar(select(Gateway).where(Gateway.token_hash == token_hash))


async def lock(db: AsyncSession, gateway_id: str) -> Gateway | None:
    """The gateway row, locked for this transaction, re-read.

    PostgreSQL: `FOR NO KEY UPDATE`, which serializes lockers but not inserts of rows that
    reference the gateway. SQLite: the whole-database write lock is already held, as every
    transaction there begins IMMEDIATE.

    Lock order everywhere: gateway row, then session rows (by id), then lease rows.
    """
    return await db.scalar(
        select(Gateway)
        .where(Gateway.id == gateway_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )


async def get_region(db: AsyncSession, code: str) -> Region | None:
    return await db.get(Region, code)


async def list_regions(db: AsyncSession) -> list[Region]:
    return list(await db.scalars(select(Region).order_by(Region.code)))


async def list_all(db: AsyncSession) -> list[Gateway]:
    return list(await db.scalars(select(Gateway).order_by(Gateway.region_code, Gateway.name)))


async def list_enabled(db: AsyncSession, region_code: str | None) -> list[Gateway]:
    query = select(Gateway).where(Gateway.is_enabled.is_(True))
    if region_code is not None:
        query = query.where(Gateway.region_code == region_code)
    return list(await db.scalars(query.order_by(Gateway.name)))


async def taken_blocks(db: AsyncSession) -> list[tuple[str, str]]:
    """Every gateway's (IPv4, IPv6) block, disabled ones included: blocks are never reused."""
    rows = await db.execute(select(Gateway.ipv4_pool, Gateway.ipv6_pool))
    return [(row.ipv4_pool, row.ipv6_pool) for row in rows]


def _live_device_filter(now: datetime) -> list[ColumnElement[bool]]:
    return [
        Device.status == "active",
        DataSession.status.in_(LIVE_STATES),
        or_(DataSession.expires_at.is_(None), DataSession.expires_at > now),
    ]


async def live_device_counts(db: AsyncSession, now: datetime) -> dict[str, int]:
    """Active devices of live sessions, per gateway: the load that counts against capacity."""
    rows = await db.execute(
        select(Device.gateway_id, func.count())
        .join(DataSession, DataSession.id == Device.session_id)
        .where(*_live_device_filter(now))
        .group_by(Device.gateway_id)
    )
    return {gateway_id: count for gateway_id, count in rows}


async def live_peers(
    db: AsyncSession, gateway_id: str, now: datetime
) -> list[tuple[Device, DataSession]]:
    """Devices the gateway must carry, with their sessions, in a stable order."""
    rows = await db.execute(
        select(Device, DataSession)
        .join(DataSession, DataSession.id == Device.session_id)
        .where(Device.gateway_id == gateway_id, *_live_device_filter(now))
        .order_by(Device.host_index)
    )
    return [(device, session) for device, session in rows]


def _sessions_carried_by(gateway_id: str) -> Select[Any]:
    return (
        select(Device.session_id)
        .where(Device.gateway_id == gateway_id, Device.status == "active")
        .distinct()
    )


async def carriers_of_sessions(db: AsyncSession, gateway_id: str) -> dict[str, set[str]]:
    """For each session with an active device on `gateway_id`: every gateway carrying it."""
    rows = await db.execute(
        select(Device.session_id, Device.gateway_id)
        .where(Device.status == "active", Device.session_id.in_(_sessions_carried_by(gateway_id)))
        .distinct()
    )
    carriers: dict[str, set[str]] = {}
    for session_id, carrier_id in rows:
        carriers.setdefault(session_id, set()).add(carrier_id)
    return carriers


async def carriers_of(db: AsyncSession, session_ids: Iterable[str]) -> dict[str, set[str]]:
    ids = list(set(session_ids))
    carriers: dict[str, set[str]] = {session_id: set() for session_id in ids}
    if not ids:
        return carriers
    rows = await db.execute(
        select(Device.session_id, Device.gateway_id)
        .where(Device.status == "active", Device.session_id.in_(ids))
        .distinct()
    )
    for session_id, carrier_id in rows:
        carriers[session_id].add(carrier_id)
    return carriers


async def leases_of_sessions_carried_by(db: AsyncSession, gateway_id: str) -> list[GatewayLease]:
    """All gateways' leases of the sessions `gateway_id` carries."""
    return list(
        await db.scalars(
            select(GatewayLease).where(
                GatewayLease.session_id.in_(_sessions_carried_by(gateway_id))
            )
        )
    )


async def leases_of(
    db: AsyncSession, session_ids: Iterable[str], *, fresh: bool = False
) -> list[GatewayLease]:
    ids = list(set(session_ids))
    if not ids:
        return []
    query = select(GatewayLease).where(GatewayLease.session_id.in_(ids))
    if fresh:
        query = query.execution_options(populate_existing=True)
    return list(await db.scalars(query))


async def ensure_leases(db: AsyncSession, pairs: Iterable[tuple[str, str]], now: datetime) -> None:
    """Create empty (gateway, session) lease rows that do not exist yet; a row created by a
    concurrent transaction is left alone (no duplicate-key error)."""
    rows = [
        {
            "gateway_id": gateway_id,
            "session_id": session_id,
            "granted_bytes": 0,
            "used_bytes": 0,
            "updated_at": now,
        }
        for gateway_id, session_id in dict.fromkeys(pairs)
    ]
    insert = postgresql_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    for start in range(0, len(rows), _INSERT_CHUNK):
        await db.execute(
            insert(GatewayLease)
            .values(rows[start : start + _INSERT_CHUNK])
            .on_conflict_do_nothing(index_elements=["gateway_id", "session_id"])
        )


async def lock_sessions(db: AsyncSession, session_ids: Iterable[str]) -> dict[str, DataSession]:
    """Session rows locked in id order (a stable order: no deadlock between two lockers),
    re-read so their usage is current."""
    ids = sorted(set(session_ids))
    if not ids:
        return {}
    rows = await db.scalars(
        select(DataSession)
        .where(DataSession.id.in_(ids))
        .order_by(DataSession.id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    return {session.id: session for session in rows}


async def sessions_by_id(db: AsyncSession, session_ids: Iterable[str]) -> dict[str, DataSession]:
    ids = list(set(session_ids))
    if not ids:
        return {}
    rows = await db.scalars(select(DataSession).where(DataSession.id.in_(ids)))
    return {session.id: session for session in rows}


async def sessions_with_device_on(
    db: AsyncSession, gateway_id: str, session_ids: Iterable[str]
) -> set[str]:
    """Which of `session_ids` have a device (active or since removed) on the gateway."""
    ids = list(set(session_ids))
    if not ids:
        return set()
    rows = await db.scalars(
        select(Device.session_id)
        .where(Device.gateway_id == gateway_id, Device.session_id.in_(ids))
        .distinct()
    )
    return set(rows)


async def gateways_carrying(db: AsyncSession, session_id: str) -> list[str]:
    rows = await db.scalars(
        select(Device.gateway_id)
        .where(Device.session_id == session_id, Device.status == "active")
        .distinct()
    )
    return list(rows)


async def bump_revisions(db: AsyncSession, gateway_ids: Sequence[str]) -> dict[str, int]:
    """Increment each gateway's revision atomically; their new revisions."""
    if not gateway_ids:
        return {}
    rows = await db.execute(
        update(Gateway)
        .where(Gateway.id.in_(gateway_ids))
        .values(revision=Gateway.revision + 1)
        .returning(Gateway.id, Gateway.revision)
        .execution_options(synchronize_session="fetch")
    )
    return {gateway_id: revision for gateway_id, revision in rows}


async def oldest_reusable_release(
    db: AsyncSession, gateway_id: str, released_before: datetime
) -> AddressRelease | None:
    """The lowest host index given back before `released_before`."""
    return await db.scalar(
        select(AddressRelease)
        .where(
            AddressRelease.gateway_id == gateway_id,
            AddressRelease.released_at <= released_before,
        )
        .order_by(AddressRelease.host_index)
        .limit(1)
    )


async def count_cooling_releases(db: AsyncSession, gateway_id: str) -> int:
    return int(
        await db.scalar(
            select(func.count())
            .select_from(AddressRelease)
            .where(AddressRelease.gateway_id == gateway_id)
        )
        or 0
    )


async def delete_release(db: AsyncSession, gateway_id: str, host_index: int) -> None:
    await db.execute(
        delete(AddressRelease).where(
            AddressRelease.gateway_id == gateway_id, AddressRelease.host_index == host_index
        )
    )


async def get_release(db: AsyncSession, gateway_id: str, host_index: int) -> AddressRelease | None:
    return await db.get(AddressRelease, (gateway_id, host_index))


async def usage_batch_exists(db: AsyncSession, gateway_id: str, sequence: int) -> bool:
    return await db.get(UsageBatch, (gateway_id, sequence)) is not None


async def devices_by_public_key(
    db: AsyncSession, gateway_id: str, public_keys: Iterable[str]
) -> list[Device]:
    keys = list(set(public_keys))
    if not keys:
        return []
    return list(
        await db.scalars(
            select(Device).where(
                Device.gateway_id == gateway_id,
                Device.status == "active",
                Device.public_key.in_(keys),
            )
        )
    )


async def mark_offline(db: AsyncSession, seen_before: datetime) -> int:
    result = await db.execute(
        update(Gateway)
        .where(
            Gateway.is_online.is_(True),
            or_(Gateway.last_heartbeat_at.is_(None), Gateway.last_heartbeat_at < seen_before),
        )
        .values(is_online=False)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def add_audit(db: AsyncSession, *, actor: str, action: str, target: str, detail: str) -> None:
    db.add(AuditEntry(actor=actor, action=action, target=target, detail=detail[:2048]))
