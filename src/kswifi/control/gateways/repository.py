"""Queries of the gateways domain."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    String,
    Table,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.orm.attributes import set_committed_value

from kswifi.control.audit import add_audit as add_audit  # the domain's audit writer
from kswifi.control.db import id_list_text, number_list_text
from kswifi.control.models import (
    LIVE_STATES,
    AddressRelease,
    DataSession,
    Device,
    DeviceStatus,
    Gateway,
    GatewayLease,
    Region,
    UsageBatch,
)
from kswifi.control.models.base import UTCDateTime

# Rows per INSERT and ids per IN (...): far below the databases' bound-parameter limits.
_INSERT_CHUNK = 1000
_REGISTRATION_LOCK_KEY = 0x4B5357_4757  # "KSW" "GW": any constant unique to this lock
_IN_CHUNK = 5000


def _chunks(values: Iterable[str]) -> list[list[str]]:
    """Distinct values, sorted, in slices that fit in one `IN (...)`."""
    ordered = sorted(set(values))
    return [ordered[start : start + _IN_CHUNK] for start in range(0, len(ordered), _IN_CHUNK)]


def _is_postgresql(db: AsyncSession) -> bool:
    return db.get_bind().dialect.name == "postgresql"


def _one_of(db: AsyncSession, column: Any, values: list[str]) -> ColumnElement[bool]:
    """`column IN (values)`. On PostgreSQL `column IN (SELECT unnest(:array))`: one bound array,
    so the statement is compiled and planned once, not once per list length; and a semi-join
    that uses the column's index (`= ANY(:array)` of a generic plan compares every row of the
    table with every value)."""
    if _is_postgresql(db):
        # Its text cannot hold a NUL: such a value (from a gateway) matches no row, and would
        # not even bind.
        values = [value for value in values if "\x00" not in value]
        array = bindparam(None, values, type_=ARRAY(String), unique=True)
        return cast(ColumnElement[bool], column.in_(select(func.unnest(array))))
    return cast(ColumnElement[bool], column.in_(values))


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
    if db.get_bind().dialect.name == "postgresql":
        await db.execute(select(func.pg_advisory_xact_lock(_REGISTRATION_LOCK_KEY)))


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


def _live_device_filter(now: datetime | ColumnElement[datetime]) -> list[ColumnElement[bool]]:
    return [
        Device.status == DeviceStatus.ACTIVE,
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


@dataclass(frozen=True)
class PeerRow:
    """What a desired-state peer is made of: plain columns, no ORM objects (10,000s per poll)."""

    public_key: str
    preshared_key_encrypted: str
    ipv4: str
    ipv6: str
    session_id: str
    data_limit_bytes: int
    used_bytes: int
    speed_mbps: int
    expires_at: datetime | None
    lease_granted_bytes: int | None
    lease_used_bytes: int | None
    lease_held_bytes: int | None
    lease_served_at: datetime | None


async def live_peers(db: AsyncSession, gateway_id: str, now: datetime) -> list[PeerRow]:
    """Devices the gateway must carry, with their sessions' limits and the gateway's own
    lease of each (None before the first one), in a stable order."""
    rows = await db.execute(
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
        )
        .join(DataSession, DataSession.id == Device.session_id)
        .outerjoin(
            GatewayLease,
            (GatewayLease.gateway_id == Device.gateway_id)
            & (GatewayLease.session_id == Device.session_id),
        )
        .where(Device.gateway_id == gateway_id, *_live_device_filter(now))
        .order_by(Device.host_index)
    )
    return [PeerRow(*tuple[Any, ...](row)) for row in rows]


def _sessions_carried_by(gateway_id: str) -> Select[Any]:
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
        carriers.setdefault(session_id, set()).add(carrier_id)
    return carriers


async def carriers_of(db: AsyncSession, session_ids: Iterable[str]) -> dict[str, set[str]]:
    """Every gateway with an active device of each session (an empty set for none)."""
    carriers: dict[str, set[str]] = {session_id: set() for session_id in session_ids}
    for chunk in _chunks(carriers):
        rows = await db.execute(
            select(Device.session_id, Device.gateway_id)
            .where(Device.status == DeviceStatus.ACTIVE, _one_of(db, Device.session_id, chunk))
            .distinct()
        )
        for session_id, carrier_id in rows:
            carriers[session_id].add(carrier_id)
    return carriers


async def other_carriers_of(
    db: AsyncSession, gateway_id: str, session_ids: Iterable[str]
) -> dict[str, set[str]]:
    """For each of the sessions that has one: the OTHER gateways with an active device of it
    (usually none, so this returns few rows whatever the number of sessions)."""
    carriers: dict[str, set[str]] = {}
    for chunk in _chunks(session_ids):
        rows = await db.execute(
            select(Device.session_id, Device.gateway_id)
            .where(
                Device.status == DeviceStatus.ACTIVE,
                Device.gateway_id != gateway_id,
                _one_of(db, Device.session_id, chunk),
            )
            .distinct()
        )
        for session_id, carrier_id in rows:
            carriers.setdefault(session_id, set()).add(carrier_id)
    return carriers


class LeaseRow(NamedTuple):
    """A lease as stored (a named tuple: hundreds are made per usage batch)."""

    gateway_id: str
    session_id: str
    granted_bytes: int
    used_bytes: int
    held_bytes: int = 0
    served_at: datetime | None = None


_LEASE_COLUMNS = (
    GatewayLease.gateway_id,
    GatewayLease.session_id,
    GatewayLease.granted_bytes,
    GatewayLease.used_bytes,
    GatewayLease.held_bytes,
    GatewayLease.served_at,
)


async def other_leases_of_sessions_carried_by(db: AsyncSession, gateway_id: str) -> list[LeaseRow]:
    """Other gateways' leases of the sessions `gateway_id` carries (sessions that moved or
    are shared; usually none)."""
    rows = await db.execute(
        select(*_LEASE_COLUMNS).where(
            GatewayLease.session_id.in_(_sessions_carried_by(gateway_id)),
            GatewayLease.gateway_id != gateway_id,
        )
    )
    return [LeaseRow(*row) for row in rows]


async def leases_of(db: AsyncSession, session_ids: Iterable[str]) -> list[LeaseRow]:
    """All gateways' leases of the sessions, as the database holds them now."""
    found: list[LeaseRow] = []
    for chunk in _chunks(session_ids):
        rows = await db.execute(
            select(*_LEASE_COLUMNS).where(_one_of(db, GatewayLease.session_id, chunk))
        )
        found.extend(LeaseRow(*row) for row in rows)
    return found


async def other_leases_of(
    db: AsyncSession, gateway_id: str, session_ids: Iterable[str]
) -> list[LeaseRow]:
    """The OTHER gateways' leases of the sessions (sessions that moved or are shared)."""
    found: list[LeaseRow] = []
    for chunk in _chunks(session_ids):
        rows = await db.execute(
            select(*_LEASE_COLUMNS).where(
                GatewayLease.gateway_id != gateway_id,
                _one_of(db, GatewayLease.session_id, chunk),
            )
        )
        found.extend(LeaseRow(*row) for row in rows)
    return found


# Bound as arrays: one statement text whatever the number of rows (no compile per call).
_PG_ENSURE_LEASES = text(
    "INSERT INTO gateway_leases"
    " (gateway_id, session_id, granted_bytes, used_bytes, updated_at, served_at)"
    " SELECT d.gateway_id, d.session_id, 0, 0, CAST(:now AS TIMESTAMP WITH TIME ZONE),"
    " CAST(:now AS TIMESTAMP WITH TIME ZONE)"
    " FROM unnest(CAST(:gateway_ids AS VARCHAR[]), CAST(:session_ids AS VARCHAR[]))"
    " AS d(gateway_id, session_id) ORDER BY d.gateway_id, d.session_id"
    " ON CONFLICT (gateway_id, session_id) DO NOTHING"
).bindparams(bindparam("now", type_=UTCDateTime()))


async def ensure_leases(db: AsyncSession, pairs: Iterable[tuple[str, str]], now: datetime) -> None:
    """Create empty (gateway, session) lease rows that do not exist yet; a row created by a
    concurrent transaction is left alone (no duplicate-key error)."""
    ordered = sorted(set(pairs))  # one order: no lock cycles
    if not ordered:
        return
    if db.get_bind().dialect.name == "postgresql":
        await db.execute(
            _PG_ENSURE_LEASES,
            {
                "gateway_ids": [gateway_id for gateway_id, _ in ordered],
                "session_ids": [session_id for _, session_id in ordered],
                "now": now,
            },
        )
        return
    rows = [
        {
            "gateway_id": gateway_id,
            "session_id": session_id,
            "granted_bytes": 0,
            "used_bytes": 0,
            "updated_at": now,
            "served_at": now,
        }
        for gateway_id, session_id in ordered
    ]
    for start in range(0, len(rows), _INSERT_CHUNK):
        await db.execute(
            sqlite_insert(GatewayLease)
            .values(rows[start : start + _INSERT_CHUNK])
            .on_conflict_do_nothing(index_elements=["gateway_id", "session_id"])
        )


@dataclass(frozen=True)
class GrantChange:
    """A lease's new grant; `held_bytes` > 0 keeps a higher grant reserved until the gateway
    applied revision `held_until_revision`."""

    gateway_id: str
    session_id: str
    granted_bytes: int
    held_bytes: int
    held_until_revision: int | None  # None: the hold's revision stays as it is


async def set_granted(db: AsyncSession, changes: Iterable[GrantChange], now: datetime) -> None:
    """New grants (and holds), written in one executemany."""
    params = [
        {
            "b_gateway": change.gateway_id,
            "b_session": change.session_id,
            "b_granted": change.granted_bytes,
            "b_held": change.held_bytes,
            "b_until": change.held_until_revision,
            "b_now": now,
        }
        # one order: no lock cycles
        for change in sorted(changes, key=lambda c: (c.gateway_id, c.session_id))
    ]
    if not params:
        return
    table = cast(Table, GatewayLease.__table__)
    await db.execute(
        update(table)
        .where(
            table.c.gateway_id == bindparam("b_gateway"),
            table.c.session_id == bindparam("b_session"),
        )
        .values(
            granted_bytes=bindparam("b_granted"),
            held_bytes=bindparam("b_held"),
            held_until_revision=func.coalesce(bindparam("b_until"), table.c.held_until_revision),
            updated_at=bindparam("b_now"),
        ),
        params,
    )


async def has_undelivered_holds(db: AsyncSession, gateway_id: str) -> bool:
    found = await db.scalar(
        select(GatewayLease.session_id)
        .where(
            GatewayLease.gateway_id == gateway_id,
            GatewayLease.held_bytes > 0,
            GatewayLease.held_until_revision == 0,
        )
        .limit(1)
    )
    return found is not None


async def stamp_holds(db: AsyncSession, gateway_id: str, revision: int) -> int:
    """Give the gateway's holds not delivered yet the revision that delivers them; how many."""
    result = await db.execute(
        update(GatewayLease)
        .where(
            GatewayLease.gateway_id == gateway_id,
            GatewayLease.held_bytes > 0,
            GatewayLease.held_until_revision == 0,
        )
        .values(held_until_revision=revision)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def release_holds(db: AsyncSession, gateway_id: str, applied_revision: int) -> list[str]:
    """Drop the gateway's holds it has applied (revision <= `applied_revision`); the sessions
    whose reserved bytes that freed."""
    rows = await db.execute(
        update(GatewayLease)
        .where(
            GatewayLease.gateway_id == gateway_id,
            GatewayLease.held_bytes > 0,
            GatewayLease.held_until_revision <= applied_revision,
        )
        .values(held_bytes=0, held_until_revision=0)
        .returning(GatewayLease.session_id)
        .execution_options(synchronize_session=False)
    )
    return sorted(rows.scalars())


# One round trip after a usage batch: the gateway's leases of the sessions it reported get
# its bytes (created if missing), and the other gateways' leases and active devices of the
# live ones are read (usually none) — after this transaction locked those sessions' rows (the
# usage UPDATE), as the top-up that uses them needs. Row kinds: 0 the gateway's own lease,
# 1 another gateway's lease, 2 another carrier.
_PG_ADD_LEASE_USAGE = text(
    "WITH own AS (INSERT INTO gateway_leases"
    " (gateway_id, session_id, granted_bytes, used_bytes, updated_at, served_at)"
    " SELECT CAST(:gateway_id AS VARCHAR), d.session_id, 0, d.served,"
    " CAST(:now AS TIMESTAMP WITH TIME ZONE), CAST(:now AS TIMESTAMP WITH TIME ZONE)"
    " FROM unnest(string_to_array(CAST(:session_ids AS TEXT), ','),"
    " CAST(string_to_array(CAST(:served AS TEXT), ',') AS BIGINT[])) AS d(session_id, served)"
    " ORDER BY d.session_id"
    " ON CONFLICT (gateway_id, session_id) DO UPDATE SET"
    " used_bytes = gateway_leases.used_bytes + excluded.used_bytes,"
    " updated_at = excluded.updated_at,"
    " served_at = CASE WHEN excluded.used_bytes > 0 THEN excluded.served_at"
    " ELSE gateway_leases.served_at END"
    " RETURNING gateway_id, session_id, granted_bytes, used_bytes, held_bytes, served_at),"
    " live AS (SELECT unnest(string_to_array(CAST(:live AS TEXT), ',')) AS id)"
    " SELECT 0, gateway_id, session_id, granted_bytes, used_bytes, held_bytes, served_at"
    " FROM own"
    " UNION ALL SELECT 1, l.gateway_id, l.session_id, l.granted_bytes, l.used_bytes,"
    " l.held_bytes, l.served_at FROM gateway_leases AS l"
    " WHERE l.gateway_id <> CAST(:gateway_id AS VARCHAR) AND l.session_id IN (SELECT id FROM live)"
    " UNION ALL SELECT 2, v.gateway_id, v.session_id, 0, 0, 0, NULL FROM devices AS v"
    " WHERE v.status = 'active' AND v.gateway_id <> CAST(:gateway_id AS VARCHAR)"
    " AND v.session_id IN (SELECT id FROM live)"
).bindparams(bindparam("now", type_=UTCDateTime()))


async def mark_served(
    db: AsyncSession, gateway_id: str, session_ids: Iterable[str], now: datetime
) -> None:
    """The gateway's leases of these sessions are in use as of `now` (not idle)."""
    for chunk in _chunks(session_ids):
        await db.execute(
            update(GatewayLease)
            .where(GatewayLease.gateway_id == gateway_id, GatewayLease.session_id.in_(chunk))
            .values(served_at=now)
            .execution_options(synchronize_session=False)
        )


@dataclass(frozen=True)
class LeaseUsage:
    """What `add_lease_usage` leaves: the gateway's own leases of the sessions it reported, as
    they are now; and for the sessions asked about, the OTHER gateways' leases and the other
    gateways with an active device of them (both usually empty)."""

    own: list[LeaseRow]
    others: list[LeaseRow]
    other_carriers: dict[str, set[str]]


async def add_lease_usage(
    db: AsyncSession,
    gateway_id: str,
    served: Mapping[str, int],
    now: datetime,
    *,
    others_of: Iterable[str] = (),
) -> LeaseUsage:
    """Count bytes the gateway served against its leases ({session: bytes}, 0 allowed),
    creating the (empty) leases it does not hold yet; and read the other gateways' leases and
    devices of the sessions `others_of`. One statement on PostgreSQL (an upsert per chunk and
    the two reads on SQLite)."""
    session_ids = sorted(served)  # one order: no lock cycles
    if not session_ids:
        return LeaseUsage([], [], {})
    if _is_postgresql(db):
        session_ids, session_text = id_list_text(session_ids)
        own: list[LeaseRow] = []
        others: list[LeaseRow] = []
        carriers: dict[str, set[str]] = {}
        rows = await db.execute(
            _PG_ADD_LEASE_USAGE,
            {
                "session_ids": session_text,
                "served": number_list_text(served[session_id] for session_id in session_ids),
                "live": id_list_text(others_of)[1],
                "gateway_id": gateway_id,
                "now": now,
            },
        )
        for kind, *row in rows.all():
            if kind == 0:
                own.append(LeaseRow(*row))
            elif kind == 1:
                others.append(LeaseRow(*row))
            else:
                carriers.setdefault(row[1], set()).add(row[0])
        return LeaseUsage(own, others, carriers)
    table = cast(Table, GatewayLease.__table__)
    found: list[LeaseRow] = []
    for start in range(0, len(session_ids), _INSERT_CHUNK):
        statement = sqlite_insert(table).values(
            [
                {
                    "gateway_id": gateway_id,
                    "session_id": session_id,
                    "granted_bytes": 0,
                    "used_bytes": served[session_id],
                    "updated_at": now,
                    "served_at": now,
                }
                for session_id in session_ids[start : start + _INSERT_CHUNK]
            ]
        )
        rows = await db.execute(
            statement.on_conflict_do_update(
                index_elements=[table.c.gateway_id, table.c.session_id],
                set_={
                    "used_bytes": table.c.used_bytes + statement.excluded.used_bytes,
                    "updated_at": statement.excluded.updated_at,
                    "served_at": case(
                        (statement.excluded.used_bytes > 0, statement.excluded.served_at),
                        else_=table.c.served_at,
                    ),
                },
            ).returning(*(table.c[column.key] for column in _LEASE_COLUMNS))
        )
        found.extend(LeaseRow(*row) for row in rows)
    others_of = sorted(set(others_of))
    return LeaseUsage(
        found,
        await other_leases_of(db, gateway_id, others_of),
        await other_carriers_of(db, gateway_id, others_of),
    )


async def lock_session_budgets(
    db: AsyncSession, session_ids: Iterable[str]
) -> dict[str, tuple[int, int]]:
    """(data_limit_bytes, used_bytes) of the sessions, their rows locked in id order (a stable
    order: no deadlock between two lockers) and read as they are now."""
    budgets: dict[str, tuple[int, int]] = {}
    for chunk in _chunks(session_ids):  # sorted: chunks lock in id order too
        rows = await db.execute(
            select(DataSession.id, DataSession.data_limit_bytes, DataSession.used_bytes)
            .where(_one_of(db, DataSession.id, chunk))
            .order_by(DataSession.id)
            .with_for_update(key_share=True)
        )
        budgets.update({session_id: (limit, used) for session_id, limit, used in rows})
    return budgets


async def sessions_by_id(db: AsyncSession, session_ids: Iterable[str]) -> dict[str, DataSession]:
    found: dict[str, DataSession] = {}
    for chunk in _chunks(session_ids):
        rows = await db.scalars(select(DataSession).where(_one_of(db, DataSession.id, chunk)))
        found.update({session.id: session for session in rows})
    return found


async def sessions_billable_by(
    db: AsyncSession, gateway_id: str, session_ids: Iterable[str]
) -> set[str]:
    """Which of `session_ids` the gateway may report usage of: those with a device (active
    or since removed) on it, or a lease it holds."""
    ids = sorted(set(session_ids))
    if not ids:
        return set()
    found = await sessions_with_device_on(db, gateway_id, ids)
    found.update(
        row.session_id
        for row in await leases_of(db, set(ids) - found)
        if row.gateway_id == gateway_id
    )
    return found


async def sessions_with_device_on(
    db: AsyncSession, gateway_id: str, session_ids: Iterable[str]
) -> set[str]:
    """Which of `session_ids` have a device (active or since removed) on the gateway."""
    found: set[str] = set()
    for chunk in _chunks(session_ids):
        rows = await db.scalars(
            select(Device.session_id)
            .where(Device.gateway_id == gateway_id, _one_of(db, Device.session_id, chunk))
            .distinct()
        )
        found.update(rows)
    return found


async def gateways_carrying(db: AsyncSession, session_id: str) -> list[str]:
    rows = await db.scalars(
        select(Device.gateway_id)
        .where(Device.session_id == session_id, Device.status == DeviceStatus.ACTIVE)
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
    if not _is_postgresql(db):
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
    for chunk in _chunks(public_keys):
        rows = await db.scalars(
            select(Device).where(
                Device.gateway_id == gateway_id,
                Device.status == DeviceStatus.ACTIVE,
                Device.public_key.in_(chunk),
            )
        )
        found.extend(rows)
    return found


# --- placing a new device: one read, then one write while the gateway row is locked ---------


@dataclass(frozen=True)
class PlacementRow:
    """An active region with one of its enabled gateways (None: it has none) and the live
    devices that gateway carries."""

    region: Region
    gateway: Gateway | None
    load: int


def _placement_query(one_region: bool) -> Select[Region, Gateway, Any]:
    loads = (
        select(Device.gateway_id.label("gateway_id"), func.count().label("load"))
        .join(DataSession, DataSession.id == Device.session_id)
        .where(*_live_device_filter(bindparam("now", type_=UTCDateTime())))
        .group_by(Device.gateway_id)
        .subquery("loads")
    )
    query = (
        select(Region, Gateway, func.coalesce(loads.c.load, 0))
        .outerjoin(Gateway, and_(Gateway.region_code == Region.code, Gateway.is_enabled.is_(True)))
        .outerjoin(loads, loads.c.gateway_id == Gateway.id)
        .where(Region.is_active.is_(True))
        .order_by(Region.code, Gateway.name)
    )
    return query.where(Region.code == bindparam("region_code")) if one_region else query


# Built once: constructing a statement costs more Python than running it (this is the hot path
# of every new Connect Profile).
_PLACEMENT_ALL = _placement_query(one_region=False)
_PLACEMENT_ONE = _placement_query(one_region=True)


async def placement_rows(
    db: AsyncSession, now: datetime, region_code: str | None = None
) -> list[PlacementRow]:
    """Every active region (or only `region_code`), each with its enabled gateways and their
    load, in one statement."""
    if region_code is None:
        result = await db.execute(_PLACEMENT_ALL, {"now": now})
    else:
        result = await db.execute(_PLACEMENT_ONE, {"now": now, "region_code": region_code})
    return [PlacementRow(region, gateway, int(load)) for region, gateway, load in result]


@dataclass(frozen=True)
class TakenHost:
    """A gateway after `take_host_and_bump`: the host index it gave out (a reused one, or
    the next never-used one) and its new desired-state revision."""

    host_index: int
    revision: int
    name: str
    ipv4_pool: str
    ipv6_pool: str


_releases = cast(Table, AddressRelease.__table__)
_gateways = cast(Table, Gateway.__table__)
_REUSE = (
    delete(_releases)
    .where(
        _releases.c.gateway_id == bindparam("gateway_id"),
        _releases.c.host_index
        == select(_releases.c.host_index)
        .where(
            _releases.c.gateway_id == bindparam("gateway_id"),
            _releases.c.released_at <= bindparam("reusable_before"),
        )
        .order_by(_releases.c.host_index)
        .limit(1)
        .scalar_subquery(),
    )
    .returning(_releases.c.host_index)
)
_TAKEN_COLUMNS = (
    _gateways.c.next_host_index,
    _gateways.c.revision,
    _gateways.c.name,
    _gateways.c.ipv4_pool,
    _gateways.c.ipv6_pool,
)
_reused = _REUSE.cte("reused")
# PostgreSQL: the DELETE runs as a CTE of the UPDATE, whose RETURNING sees what it deleted.
_TAKE_AND_BUMP_PG = (
    update(_gateways)
    .where(_gateways.c.id == bindparam("gateway_id"))
    .values(
        revision=_gateways.c.revision + 1,
        next_host_index=_gateways.c.next_host_index
        + case((exists(select(_reused.c.host_index)), 0), else_=1),
    )
    .returning(select(_reused.c.host_index).scalar_subquery(), *_TAKEN_COLUMNS)
    .add_cte(_reused)
)
_TAKE_AND_BUMP_SQLITE = (
    update(_gateways)
    .where(_gateways.c.id == bindparam("gateway_id"))
    .values(
        revision=_gateways.c.revision + 1,
        next_host_index=_gateways.c.next_host_index + bindparam("step"),
    )
    .returning(literal(None), *_TAKEN_COLUMNS)
)


async def take_host_and_bump(
    db: AsyncSession, gateway_id: str, reusable_before: datetime
) -> TakenHost | None:
    """Take a host index on the gateway and bump its revision, locking its row until the
    transaction ends: the lowest address released before `reusable_before` is reused (its
    release row deleted), otherwise `next_host_index` is taken and advanced. One statement on
    PostgreSQL (the DELETE is a CTE), two on SQLite (whose write lock is already held).

    Race-free without locking the gateway first: a release row is deleted by one transaction
    only (a concurrent one finds it gone and takes a new index), and the index counter moves
    under the row lock of the UPDATE. The caller checks the index against the blocks (past
    the end: roll back). None when there is no such gateway."""
    params: dict[str, Any] = {"gateway_id": gateway_id, "reusable_before": reusable_before}
    if db.get_bind().dialect.name == "postgresql":
        row = (await db.execute(_TAKE_AND_BUMP_PG, params)).one_or_none()
        if row is None:
            return None
        reused = row[0]
    else:
        reused = (await db.execute(_REUSE, params)).scalar_one_or_none()
        row = (
            await db.execute(
                _TAKE_AND_BUMP_SQLITE,
                {"gateway_id": gateway_id, "step": 0 if reused is not None else 1},
            )
        ).one_or_none()
        if row is None:
            return None
    host_index = int(reused) if reused is not None else int(row[1]) - 1
    return TakenHost(host_index, int(row[2]), row[3], row[4], row[5])
