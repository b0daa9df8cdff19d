"""Queries of the gateways domain."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.orm.attributes import set_committed_value

from kswifi.control.audit import add_audit as add_audit  # the domain's audit writer
from kswifi.control.db import (
    chunks,
    id_list_text,
    is_postgresql,
    number_list_text,
    one_of,
)
from kswifi.control.models import (
    LIVE_STATES,
    DataSession,
    DesiredChange,
    Device,
    DeviceStatus,
    Gateway,
    GatewayLease,
    Region,
    UsageBatch,
)
from kswifi.control.models.base import UTCDateTime

_REGISTRATION_LOCK_KEY = 0x4B5357_4757  # "KSW" "GW": any constant unique to this lock


async def get(db: AsyncSession, gateway_id: str) -> Gateway | None:
    return await db.get(Gateway, gateway_id)


async def get_by_name(db: AsyncSession, name: str) -> Gateway | None:
    return await db.scalar(select(Gateway).where(Gateway.name == name))


async def get_by_token_hash(db: AsyncSession, token_hash: str) -> Gateway | None:
    return await db.scalar(select(Gateway).where(Gateway.token_hash == token_hash))


# Built once: constructing the statement cost more Python than running it.
_LOCK = (
    select(Gateway)
    .where(Gateway.id == bindparam("gateway_id"))
    .with_for_update(key_share=True)
    .execution_options(populate_existing=True)
)


async def lock(db: AsyncSession, gateway_id: str) -> Gateway | None:
    """The gateway row, locked for this transaction, re-read.

    PostgreSQL: `FOR NO KEY UPDATE`, which serializes lockers but not inserts of rows that
    reference the gateway. SQLite: the whole-database write lock is already held, as every
    transaction there begins IMMEDIATE.

    Lock order everywhere: gateway row, then session rows (by id), then lease rows.
    """
    return await db.scalar(_LOCK, {"gateway_id": gateway_id})


async def lock_registrations(db: AsyncSession) -> None:
    """Serialize gateway registrations (rare operator actions) so two never carve the same
    blocks: a transaction-scoped advisory lock on PostgreSQL; SQLite transactions already are
    serialized."""
    if is_postgresql(db):
        await db.execute(select(func.pg_advisory_xact_lock(_REGISTRATION_LOCK_KEY)))


async def get_region(db: AsyncSession, code: str) -> Region | None:
    return await db.get(Region, code)


async def list_regions(db: AsyncSession) -> list[Region]:
    return list(await db.scalars(select(Region).order_by(Region.code)))


async def list_all(db: AsyncSession) -> list[Gateway]:
    """Every gateway, read afresh (counts such as `installed_devices` move by SQL)."""
    query = select(Gateway).order_by(Gateway.region_code, Gateway.name)
    return list(await db.scalars(query.execution_options(populate_existing=True)))


async def list_enabled(db: AsyncSession, region_code: str | None) -> list[Gateway]:
    query = select(Gateway).where(Gateway.is_enabled.is_(True))
    if region_code is not None:
        query = query.where(Gateway.region_code == region_code)
    return list(await db.scalars(query.order_by(Gateway.name)))


async def taken_blocks(db: AsyncSession) -> list[tuple[str, str]]:
    """Every gateway's (IPv4, IPv6) block, disabled ones included: blocks are never reused."""
    rows = await db.execute(select(Gateway.ipv4_pool, Gateway.ipv6_pool))
    return [(row.ipv4_pool, row.ipv6_pool) for row in rows]


def live_session_filter(now: datetime | ColumnElement[datetime]) -> ColumnElement[bool]:
    """A session a device may draw data from at `now`."""
    return and_(
        DataSession.status.in_(LIVE_STATES),
        or_(DataSession.expires_at.is_(None), DataSession.expires_at > now),
    )


@dataclass(frozen=True)
class PeerRow:
    """What a desired-state peer is made of: plain columns, no ORM objects (10,000s per poll).
    The session's columns are None for a device without a live session (the garden)."""

    public_key: str
    preshared_key_encrypted: str
    ipv4: str
    ipv6: str
    session_id: str | None
    data_limit_bytes: int | None
    used_bytes: int | None
    speed_mbps: int | None
    expires_at: datetime | None
    lease_granted_bytes: int | None
    lease_used_bytes: int | None
    lease_held_bytes: int | None
    lease_served_at: datetime | None
    user_id: str
    host_index: int


async def live_peers(
    db: AsyncSession, gateway_id: str, now: datetime, users: Iterable[str] | None = None
) -> list[PeerRow]:
    """Devices the gateway must carry (every installed one, or those of `users`), with the
    limits of the live session each draws from (None: the garden) and the gateway's own lease
    of it (None before the first one), in a stable order."""
    if users is not None:
        found: list[PeerRow] = []
        for chunk in chunks(users):
            found.extend(await _live_peers(db, gateway_id, now, one_of(db, Device.user_id, chunk)))
        return sorted(found, key=lambda row: row.host_index)
    return await _live_peers(db, gateway_id, now, None)


async def _live_peers(
    db: AsyncSession, gateway_id: str, now: datetime, which: ColumnElement[bool] | None
) -> list[PeerRow]:
    query = (
        select(
            Device.public_key,
            Device.preshared_key_encrypted,
            Device.ipv4,
            Device.ipv6,
            DataSession.id,
            DataSession.data_limit_bytes,
            DataSession.used_bytes,
            DataSession.speed_mbps,
            DataSession.expires_at,
            GatewayLease.granted_bytes,
            GatewayLease.used_bytes,
            GatewayLease.held_bytes,
            GatewayLease.served_at,
            Device.user_id,
            Device.host_index,
        )
        .outerjoin(DataSession, and_(DataSession.id == Device.session_id, live_session_filter(now)))
        .outerjoin(
            GatewayLease,
            (GatewayLease.gateway_id == Device.gateway_id)
            & (GatewayLease.session_id == DataSession.id),
        )
        .where(Device.gateway_id == gateway_id, Device.status == DeviceStatus.ACTIVE)
        .order_by(Device.host_index)
    )
    if which is not None:
        query = query.where(which)
    return [PeerRow(*tuple[Any, ...](row)) for row in await db.execute(query)]


def sessions_carried_by(gateway_id: str) -> Select[Any]:
    return (
        select(Device.session_id)
        .where(Device.gateway_id == gateway_id, Device.status == DeviceStatus.ACTIVE)
        .distinct()
    )


async def other_carriers(db: AsyncSession, gateway_id: str) -> dict[str, set[str]]:
    """For the sessions with an active device on `gateway_id`: the OTHER gateways carrying
    them (usually none, so this answers from the index without touching most sessions)."""
    other = aliased(Device)
    rows = await db.execute(
        select(other.session_id, other.gateway_id)
        .join(Device, Device.session_id == other.session_id)
        .where(
            Device.gateway_id == gateway_id,
            Device.status == DeviceStatus.ACTIVE,
            other.status == DeviceStatus.ACTIVE,
            other.gateway_id != gateway_id,
        )
        .distinct()
    )
    carriers: dict[str, set[str]] = {}
    for session_id, carrier_id in rows:
        if session_id is not None:
            carriers.setdefault(session_id, set()).add(carrier_id)
    return carriers


async def carriers_of(db: AsyncSession, session_ids: Iterable[str]) -> dict[str, set[str]]:
    """Every gateway with an active device of each session (an empty set for none)."""
    carriers: dict[str, set[str]] = {session_id: set() for session_id in session_ids}
    for chunk in chunks(carriers):
        rows = await db.execute(
            select(Device.session_id, Device.gateway_id)
            .where(Device.status == DeviceStatus.ACTIVE, one_of(db, Device.session_id, chunk))
            .distinct()
        )
        for session_id, carrier_id in rows:
            if session_id is not None:
                carriers[session_id].add(carrier_id)
    return carriers


async def other_carriers_of(
    db: AsyncSession, gateway_id: str, session_ids: Iterable[str]
) -> dict[str, set[str]]:
    """For each of the sessions that has one: the OTHER gateways with an active device of it
    (usually none, so this returns few rows whatever the number of sessions)."""
    carriers: dict[str, set[str]] = {}
    for chunk in chunks(session_ids):
        rows = await db.execute(
            select(Device.session_id, Device.gateway_id)
            .where(
                Device.status == DeviceStatus.ACTIVE,
                Device.gateway_id != gateway_id,
                one_of(db, Device.session_id, chunk),
            )
            .distinct()
        )
        for session_id, carrier_id in rows:
            if session_id is not None:
                carriers.setdefault(session_id, set()).add(carrier_id)
    return carriers


# Bound as arrays: one statement text whatever the number of rows (no compile per call).


# One round trip after a usage batch: the gateway's leases of the sessions it reported get
# its bytes (created if missing), and the other gateways' leases and active devices of the
# live ones are read (usually none) — after this transaction locked those sessions' rows (the
# usage UPDATE), as the top-up that uses them needs. Row kinds: 0 the gateway's own lease,
# 1 another gateway's lease, 2 another carrier.


async def lock_session_budgets(
    db: AsyncSession, session_ids: Iterable[str]
) -> dict[str, tuple[int, int]]:
    """(data_limit_bytes, used_bytes) of the sessions, their rows locked in id order (a stable
    order: no deadlock between two lockers) and read as they are now."""
    budgets: dict[str, tuple[int, int]] = {}
    for chunk in chunks(session_ids):  # sorted: chunks lock in id order too
        rows = await db.execute(
            select(DataSession.id, DataSession.data_limit_bytes, DataSession.used_bytes)
            .where(one_of(db, DataSession.id, chunk))
            .order_by(DataSession.id)
            .with_for_update(key_share=True)
        )
        budgets.update({session_id: (limit, used) for session_id, limit, used in rows})
    return budgets


async def sessions_by_id(db: AsyncSession, session_ids: Iterable[str]) -> dict[str, DataSession]:
    found: dict[str, DataSession] = {}
    for chunk in chunks(session_ids):
        rows = await db.scalars(select(DataSession).where(one_of(db, DataSession.id, chunk)))
        found.update({session.id: session for session in rows})
    return found


async def sessions_with_device_on(
    db: AsyncSession, gateway_id: str, session_ids: Iterable[str]
) -> set[str]:
    """Which of `session_ids` have a device (active or since removed) on the gateway."""
    found: set[str] = set()
    for chunk in chunks(session_ids):
        rows = await db.scalars(
            select(Device.session_id)
            .where(Device.gateway_id == gateway_id, one_of(db, Device.session_id, chunk))
            .distinct()
        )
        found.update(session_id for session_id in rows if session_id is not None)
    return found


async def record_changes(
    db: AsyncSession, revisions: Mapping[str, int], users: Iterable[str] | None, now: datetime
) -> None:
    """Whose peers the new `revisions` changed (None: anyone's), for `changed_users`."""
    people = sorted(set(users)) if users is not None else [DesiredChange.EVERYONE]
    rows = [
        {"gateway_id": gateway_id, "revision": revision, "user_id": user_id, "created_at": now}
        for gateway_id, revision in revisions.items()
        for user_id in people
    ]
    if rows:
        await db.execute(insert(DesiredChange), rows)


async def changed_users(db: AsyncSession, gateway_id: str, after_revision: int) -> set[str] | None:
    """The people whose peers on the gateway changed after `after_revision` (None: it may be
    anyone's; read under the gateway's row lock, every writer's bump is in)."""
    rows = await db.scalars(
        select(DesiredChange.user_id).where(
            DesiredChange.gateway_id == gateway_id, DesiredChange.revision > after_revision
        )
    )
    users = set(rows)
    return None if DesiredChange.EVERYONE in users else users


async def owners_of_sessions(db: AsyncSession, session_ids: Iterable[str]) -> set[str]:
    owners: set[str] = set()
    for chunk in chunks(session_ids):
        owners.update(
            await db.scalars(select(DataSession.user_id).where(one_of(db, DataSession.id, chunk)))
        )
    return owners


async def purge_changes(db: AsyncSession, before: datetime) -> int:
    result = await db.execute(
        delete(DesiredChange)
        .where(DesiredChange.created_at < before)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


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


# A usage batch's bookkeeping in one round trip: which of its sessions the gateway may bill (a
# device of the session on it, active or since removed, or a lease it holds), and the batch
# recorded with their count and bytes, made the gateway's last sequence; nothing recorded if
# that batch was recorded before. The caller holds the gateway's row lock.
_PG_ACCEPT_BATCH = text(
    "WITH carried AS MATERIALIZED (SELECT d.id, d.bytes"
    " FROM unnest(string_to_array(CAST(:ids AS TEXT), ','),"
    " CAST(string_to_array(CAST(:bytes AS TEXT), ',') AS BIGINT[])) AS d(id, bytes)"
    " WHERE EXISTS (SELECT 1 FROM devices AS v"
    " WHERE v.gateway_id = CAST(:gateway_id AS VARCHAR) AND v.session_id = d.id)"
    " OR EXISTS (SELECT 1 FROM gateway_leases AS l"
    " WHERE l.gateway_id = CAST(:gateway_id AS VARCHAR) AND l.session_id = d.id)),"
    " batch AS (INSERT INTO usage_batches"
    " (gateway_id, sequence, received_at, delta_count, total_bytes)"
    " SELECT CAST(:gateway_id AS VARCHAR), :sequence, CAST(:now AS TIMESTAMP WITH TIME ZONE),"
    " count(*), coalesce(sum(bytes), 0) FROM carried"
    " ON CONFLICT (gateway_id, sequence) DO NOTHING RETURNING sequence),"
    " moved AS (UPDATE gateways SET last_usage_sequence = batch.sequence FROM batch"
    " WHERE gateways.id = CAST(:gateway_id AS VARCHAR) RETURNING gateways.id)"
    " SELECT EXISTS (SELECT 1 FROM moved), (SELECT string_agg(id, ',') FROM carried)"
).bindparams(
    bindparam("now", type_=UTCDateTime()),
    bindparam("sequence", type_=BigInteger()),
)


async def accept_usage_batch(
    db: AsyncSession,
    gateway: Gateway,
    *,
    sequence: int,
    received_at: datetime,
    served: Mapping[str, int],
) -> set[str] | None:
    """Which sessions of a usage batch ({session: bytes}) the gateway may bill (see
    `sessions_billable_by`), the batch recorded with those sessions' count and bytes and made
    the gateway's last sequence; None (nothing written) when that batch was recorded before.
    One statement on PostgreSQL; the caller holds the gateway's row lock."""
    if not is_postgresql(db):
        carried = await sessions_billable_by(db, gateway.id, served)
        inserted = await db.execute(
            sqlite_insert(UsageBatch)
            .values(
                gateway_id=gateway.id,
                sequence=sequence,
                received_at=received_at,
                delta_count=len(carried),
                total_bytes=sum(served[session_id] for session_id in carried),
            )
            .on_conflict_do_nothing(index_elements=["gateway_id", "sequence"])
        )
        if not getattr(inserted, "rowcount", 0):
            return None
        gateway.last_usage_sequence = sequence
        return carried
    ids, id_text = id_list_text(served)
    row = (
        await db.execute(
            _PG_ACCEPT_BATCH,
            {
                "ids": id_text,
                "bytes": number_list_text(served[session_id] for session_id in ids),
                "gateway_id": gateway.id,
                "sequence": sequence,
                "now": received_at,
            },
        )
    ).one()
    recorded, carried = row
    if not recorded:
        return None
    set_committed_value(gateway, "last_usage_sequence", sequence)
    return set(carried.split(",")) if carried else set()


async def devices_by_public_key(
    db: AsyncSession, gateway_id: str, public_keys: Iterable[str]
) -> list[Device]:
    found: list[Device] = []
    for chunk in chunks(public_keys):
        rows = await db.scalars(
            select(Device).where(
                Device.gateway_id == gateway_id,
                Device.status == DeviceStatus.ACTIVE,
                Device.public_key.in_(chunk),
            )
        )
        found.extend(rows)
    return found


# PostgreSQL: the DELETE runs as a CTE of the UPDATE, whose RETURNING sees what it deleted.


async def sessions_billable_by(
    db: AsyncSession, gateway_id: str, session_ids: Iterable[str]
) -> set[str]:
    """Which of `session_ids` the gateway may report usage of: those with a device (active
    or since removed) on it, or a lease it holds."""
    ids = sorted(set(session_ids))
    if not ids:
        return set()
    found = await sessions_with_device_on(db, gateway_id, ids)
    for chunk in chunks(set(ids) - found):
        leased = await db.scalars(
            select(GatewayLease.session_id).where(
                GatewayLease.gateway_id == gateway_id, one_of(db, GatewayLease.session_id, chunk)
            )
        )
        found.update(leased)
    return found
