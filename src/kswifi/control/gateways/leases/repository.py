"""Queries of the lease rows: what each gateway was granted of a session and what it served."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, cast

from sqlalchemy import (
    Table,
    bindparam,
    case,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.audit import add_audit as add_audit  # the domain's audit writer

# Rows per INSERT and ids per IN (...): far below the databases' bound-parameter limits.
from kswifi.control.db import (
    INSERT_CHUNK,
    chunks,
    id_list_text,
    is_postgresql,
    number_list_text,
    one_of,
)
from kswifi.control.gateways import repository
from kswifi.control.models import (
    GatewayLease,
)
from kswifi.control.models.base import UTCDateTime


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
            GatewayLease.session_id.in_(repository.sessions_carried_by(gateway_id)),
            GatewayLease.gateway_id != gateway_id,
        )
    )
    return [LeaseRow(*row) for row in rows]


async def leases_of(db: AsyncSession, session_ids: Iterable[str]) -> list[LeaseRow]:
    """All gateways' leases of the sessions, as the database holds them now."""
    found: list[LeaseRow] = []
    for chunk in chunks(session_ids):
        rows = await db.execute(
            select(*_LEASE_COLUMNS).where(one_of(db, GatewayLease.session_id, chunk))
        )
        found.extend(LeaseRow(*row) for row in rows)
    return found


async def other_leases_of(
    db: AsyncSession, gateway_id: str, session_ids: Iterable[str]
) -> list[LeaseRow]:
    """The OTHER gateways' leases of the sessions (sessions that moved or are shared)."""
    found: list[LeaseRow] = []
    for chunk in chunks(session_ids):
        rows = await db.execute(
            select(*_LEASE_COLUMNS).where(
                GatewayLease.gateway_id != gateway_id,
                one_of(db, GatewayLease.session_id, chunk),
            )
        )
        found.extend(LeaseRow(*row) for row in rows)
    return found


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
    if is_postgresql(db):
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
    for start in range(0, len(rows), INSERT_CHUNK):
        await db.execute(
            sqlite_insert(GatewayLease)
            .values(rows[start : start + INSERT_CHUNK])
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


async def stamp_holds(db: AsyncSession, gateway_id: str, revision: int) -> list[str]:
    """Give the gateway's holds not delivered yet the revision that delivers them; their
    sessions."""
    rows = await db.execute(
        update(GatewayLease)
        .where(
            GatewayLease.gateway_id == gateway_id,
            GatewayLease.held_bytes > 0,
            GatewayLease.held_until_revision == 0,
        )
        .values(held_until_revision=revision)
        .returning(GatewayLease.session_id)
        .execution_options(synchronize_session=False)
    )
    return sorted(rows.scalars())


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
    for chunk in chunks(session_ids):
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
    if is_postgresql(db):
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
    for start in range(0, len(session_ids), INSERT_CHUNK):
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
                for session_id in session_ids[start : start + INSERT_CHUNK]
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
        await repository.other_carriers_of(db, gateway_id, others_of),
    )
