"""Queries of the sessions domain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import NamedTuple, cast

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    case,
    exists,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from kswifi.control.db import id_list_text, is_postgresql
from kswifi.control.models import (
    LIVE_STATES,
    USABLE_STATES,
    AlertKind,
    DataSession,
    Device,
    DeviceStatus,
    SessionAlert,
    UsageRollup,
)
from kswifi.control.models.base import UTCDateTime

# Sessions per statement of a batch: a few bound parameters each, far below both databases'
# limits (SQLite 32,766; PostgreSQL 32,767 — the unnest form binds only arrays anyway).
_BATCH_CHUNK = 500
# The `expiring` alert comes this long before a session's validity ends (sessions valid for
# no longer than this are not warned: it would come with their first byte).
EXPIRING_NOTICE_SECONDS = 86_400


def _chunked(values: Sequence[str]) -> list[Sequence[str]]:
    return [values[start : start + _BATCH_CHUNK] for start in range(0, len(values), _BATCH_CHUNK)]


async def get(
    db: AsyncSession, session_id: str, *, for_update: bool = False, fresh: bool = False
) -> DataSession | None:
    """The session; `fresh` re-reads it over what this transaction's identity map holds (after
    a set-based UPDATE that bypassed the ORM)."""
    statement = select(DataSession).where(DataSession.id == session_id)
    if for_update:
        statement = statement.with_for_update()
    if fresh:
        statement = statement.execution_options(populate_existing=True)
    return await db.scalar(statement)


async def list_for_user(db: AsyncSession, user_id: str) -> list[DataSession]:
    rows = await db.scalars(
        select(DataSession)
        .where(DataSession.user_id == user_id)
        .order_by(DataSession.created_at.desc(), DataSession.id)
    )
    return list(rows)


class UsageRow(NamedTuple):
    """A session as a usage batch left it (the UPDATE's RETURNING); a named tuple: hundreds
    are made per batch."""

    id: str
    status: str
    used_bytes: int
    data_limit_bytes: int
    warned_percent: int
    expires_at: datetime | None


# One statement per batch: lock the sessions in id order (the lock order of the whole domain:
# two batches sharing sessions never deadlock; the UPDATE only touches rows the CTE locked),
# add the bytes, and add them to the minute rollups of the sessions that got any. Ids and byte
# counts are bound as comma-separated texts (see `id_list_text`).
_PG_ADD_USAGE = (
    text(
        "WITH locked AS MATERIALIZED ("
        " SELECT id FROM data_sessions WHERE id = ANY(string_to_array(CAST(:ids AS TEXT), ','))"
        " ORDER BY id FOR NO KEY UPDATE),"
        " updated AS ("
        " UPDATE data_sessions AS s SET used_bytes = s.used_bytes + d.rx + d.tx,"
        " rx_bytes = s.rx_bytes + d.rx, tx_bytes = s.tx_bytes + d.tx,"
        " last_seen_at = CASE WHEN d.rx + d.tx > 0"
        " THEN CAST(:now AS TIMESTAMP WITH TIME ZONE) ELSE s.last_seen_at END"
        " FROM unnest(string_to_array(CAST(:ids AS TEXT), ','),"
        " CAST(string_to_array(CAST(:rx AS TEXT), ',') AS BIGINT[]),"
        " CAST(string_to_array(CAST(:tx AS TEXT), ',') AS BIGINT[])) AS d(id, rx, tx)"
        " WHERE s.id = d.id AND s.id IN (SELECT id FROM locked)"
        " RETURNING s.id, s.status, s.used_bytes, s.data_limit_bytes, s.warned_percent,"
        " s.expires_at, d.rx, d.tx),"
        " rolled AS ("
        " INSERT INTO usage_rollups (session_id, bucket_start, rx_bytes, tx_bytes)"
        " SELECT id, CAST(:bucket AS TIMESTAMP WITH TIME ZONE), rx, tx FROM updated"
        " WHERE rx + tx > 0 ORDER BY id"
        " ON CONFLICT (session_id, bucket_start) DO UPDATE SET"
        " rx_bytes = usage_rollups.rx_bytes + excluded.rx_bytes,"
        " tx_bytes = usage_rollups.tx_bytes + excluded.tx_bytes)"
        " SELECT id, status, used_bytes, data_limit_bytes, warned_percent, expires_at"
        " FROM updated ORDER BY id"
    )
    .bindparams(bindparam("now", type_=UTCDateTime()), bindparam("bucket", type_=UTCDateTime()))
    .columns(
        id=String,
        status=String,
        used_bytes=BigInteger,
        data_limit_bytes=BigInteger,
        warned_percent=Integer,
        expires_at=UTCDateTime(),
    )
)


async def add_usage_batch(
    db: AsyncSession, totals: Mapping[str, tuple[int, int]], now: datetime
) -> list[UsageRow]:
    """Add (rx, tx) bytes to many sessions set-based, no lost update between concurrent
    ingests, and to their minute rollups (`now`'s minute); the sessions as they are now, by id
    (missing ids are left out).

    PostgreSQL: one statement: the rows locked in id order, one `UPDATE … FROM unnest(…)`,
    one rollup upsert. SQLite (one writer at a time anyway): `UPDATE … SET … CASE id … WHERE
    id IN (…)` per chunk, then the rollups (`add_to_rollups`). `last_seen_at` moves, and a
    rollup grows, only for sessions that got bytes.
    """
    ids = sorted(totals)
    rows: list[UsageRow] = []
    if not ids:
        return rows
    bucket = now.replace(second=0, microsecond=0)
    if is_postgresql(db):
        ids, id_text = id_list_text(ids)
        if not ids:
            return rows
        await db.flush()  # a textual statement does not autoflush: pending ORM writes first
        result = await db.execute(
            _PG_ADD_USAGE,
            {
                "ids": id_text,
                "rx": ",".join([str(totals[i][0]) for i in ids]),
                "tx": ",".join([str(totals[i][1]) for i in ids]),
                "now": now,
                "bucket": bucket,
            },
        )
        return [UsageRow(*row) for row in result.all()]
    for chunk in _chunked(ids):
        rx = {i: totals[i][0] for i in chunk}
        tx = {i: totals[i][1] for i in chunk}
        both = {i: rx[i] + tx[i] for i in chunk}
        served = [i for i in chunk if both[i]]
        result = await db.execute(
            update(DataSession)
            .where(DataSession.id.in_(chunk))
            .values(
                used_bytes=DataSession.used_bytes + case(both, value=DataSession.id, else_=0),
                rx_bytes=DataSession.rx_bytes + case(rx, value=DataSession.id, else_=0),
                tx_bytes=DataSession.tx_bytes + case(tx, value=DataSession.id, else_=0),
                last_seen_at=case(
                    (DataSession.id.in_(served), now), else_=DataSession.last_seen_at
                ),
            )
            .returning(
                DataSession.id,
                DataSession.status,
                DataSession.used_bytes,
                DataSession.data_limit_bytes,
                DataSession.warned_percent,
                DataSession.expires_at,
            )
            .execution_options(synchronize_session=False)
        )
        rows.extend(UsageRow(*row) for row in result)
    rows.sort(key=lambda row: row.id)
    await add_to_rollups(
        db, bucket, [(row.id, *totals[row.id]) for row in rows if any(totals[row.id])]
    )
    return rows


async def set_warned_percents(db: AsyncSession, warned: Mapping[str, int]) -> None:
    """Store the warning thresholds reached (one UPDATE per threshold value and chunk)."""
    by_percent: dict[int, list[str]] = {}
    for session_id, percent in sorted(warned.items()):
        by_percent.setdefault(percent, []).append(session_id)
    for percent, session_ids in sorted(by_percent.items()):
        for chunk in _chunked(session_ids):
            await db.execute(
                update(DataSession)
                .where(DataSession.id.in_(chunk))
                .values(warned_percent=percent)
                .execution_options(synchronize_session=False)
            )


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


# Bound as three arrays: one statement text whatever the batch size (no compile per call).
_PG_ADD_TO_ROLLUPS = text(
    "INSERT INTO usage_rollups (session_id, bucket_start, rx_bytes, tx_bytes)"
    " SELECT d.id, CAST(:bucket AS TIMESTAMP WITH TIME ZONE), d.rx, d.tx"
    " FROM unnest(CAST(:ids AS VARCHAR[]), CAST(:rx AS BIGINT[]), CAST(:tx AS BIGINT[]))"
    " AS d(id, rx, tx) ORDER BY d.id"
    " ON CONFLICT (session_id, bucket_start) DO UPDATE SET"
    " rx_bytes = usage_rollups.rx_bytes + excluded.rx_bytes,"
    " tx_bytes = usage_rollups.tx_bytes + excluded.tx_bytes"
).bindparams(bindparam("bucket", type_=UTCDateTime()))


async def add_to_rollups(
    db: AsyncSession, bucket_start: datetime, amounts: Sequence[tuple[str, int, int]]
) -> None:
    """Add (session, rx, tx) bytes to the sessions' minute bucket: one multi-row upsert per
    chunk (safe under concurrent ingest; rows in id order, one session once)."""
    if not amounts:
        return
    if is_postgresql(db):
        ordered = sorted(amounts)
        await db.execute(
            _PG_ADD_TO_ROLLUPS,
            {
                "ids": [session_id for session_id, _, _ in ordered],
                "rx": [rx for _, rx, _ in ordered],
                "tx": [tx for _, _, tx in ordered],
                "bucket": bucket_start,
            },
        )
        return
    rows = [
        {"session_id": session_id, "bucket_start": bucket_start, "rx_bytes": rx, "tx_bytes": tx}
        for session_id, rx, tx in sorted(amounts)
    ]
    insert = postgresql_insert if is_postgresql(db) else sqlite_insert
    table = cast(Table, UsageRollup.__table__)
    for start in range(0, len(rows), _BATCH_CHUNK):
        statement = insert(table).values(rows[start : start + _BATCH_CHUNK])
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.session_id, table.c.bucket_start],
            set_={
                "rx_bytes": table.c.rx_bytes + statement.excluded.rx_bytes,
                "tx_bytes": table.c.tx_bytes + statement.excluded.tx_bytes,
            },
        )
        await db.execute(statement)


async def rollups(db: AsyncSession, session_id: str, since: datetime | None) -> list[UsageRollup]:
    statement = select(UsageRollup).where(UsageRollup.session_id == session_id)
    if since is not None:
        statement = statement.where(UsageRollup.bucket_start >= since)
    return list(await db.scalars(statement.order_by(UsageRollup.bucket_start)))


# --- which session each of a person's devices draws from (see `handover`) -----------------


async def usable_sessions_of_user(db: AsyncSession, user_id: str) -> list[DataSession]:
    """The person's current and queued sessions, oldest purchase first."""
    rows = await db.scalars(
        select(DataSession)
        .where(DataSession.user_id == user_id, DataSession.status.in_(USABLE_STATES))
        .order_by(DataSession.created_at, DataSession.id)
        .execution_options(populate_existing=True)
    )
    return list(rows)


async def active_devices_of_user(db: AsyncSession, user_id: str) -> list[Device]:
    """The person's installed devices, first installed first."""
    rows = await db.scalars(
        select(Device)
        .where(Device.user_id == user_id, Device.status == DeviceStatus.ACTIVE)
        .order_by(Device.created_at, Device.id)
        .execution_options(populate_existing=True)
    )
    return list(rows)


async def not_started(db: AsyncSession, session_ids: Sequence[str]) -> list[DataSession]:
    """Those of the sessions whose clock has not started (no byte went through yet)."""
    if not session_ids:
        return []
    rows = await db.scalars(
        select(DataSession)
        .where(DataSession.id.in_(session_ids), DataSession.activated_at.is_(None))
        .execution_options(populate_existing=True)
    )
    return list(rows)


async def gateways_carrying(db: AsyncSession, session_id: str) -> list[str]:
    """Gateways with an installed device drawing from the session."""
    rows = await db.scalars(
        select(Device.gateway_id)
        .where(Device.session_id == session_id, Device.status == DeviceStatus.ACTIVE)
        .distinct()
    )
    return list(rows)


async def users_needing_handover(db: AsyncSession, now: datetime, limit: int) -> list[str]:
    """People with an installed device drawing from a session that can no longer carry it,
    or with devices all in the garden and a current or queued session."""
    drawing = aliased(Device)
    stale = (
        select(Device.user_id)
        .join(DataSession, DataSession.id == Device.session_id)
        .where(
            Device.status == DeviceStatus.ACTIVE,
            or_(
                DataSession.status.not_in(LIVE_STATES),
                DataSession.expires_at <= now,
                DataSession.used_bytes >= DataSession.data_limit_bytes,
            ),
        )
    )
    waiting = (
        select(Device.user_id)
        .join(DataSession, DataSession.user_id == Device.user_id)
        .where(
            Device.status == DeviceStatus.ACTIVE,
            Device.session_id.is_(None),
            ~exists().where(
                drawing.user_id == Device.user_id,
                drawing.status == DeviceStatus.ACTIVE,
                drawing.session_id.is_not(None),
            ),
            DataSession.status.in_(USABLE_STATES),
            or_(DataSession.expires_at.is_(None), DataSession.expires_at > now),
            DataSession.used_bytes < DataSession.data_limit_bytes,
        )
    )
    rows = await db.scalars(stale.union(waiting).limit(limit))
    return sorted(rows)


async def note_alerts(db: AsyncSession, alerts: Sequence[tuple[str, str]], now: datetime) -> None:
    """Note (session_id, kind) alerts; one already noted is left as it is (at most once)."""
    if not alerts:
        return
    dialect_insert = postgresql_insert if is_postgresql(db) else sqlite_insert
    table = cast(Table, SessionAlert.__table__)
    rows = [{"session_id": s, "kind": k, "created_at": now} for s, k in sorted(set(alerts))]
    for start in range(0, len(rows), _BATCH_CHUNK):
        await db.execute(
            dialect_insert(table)
            .values(rows[start : start + _BATCH_CHUNK])
            .on_conflict_do_nothing()
        )


async def claim_pending_alerts(
    db: AsyncSession, limit: int
) -> list[tuple[SessionAlert, DataSession]]:
    """Alerts not sent yet, oldest first, with their sessions; locked (PostgreSQL: skipping
    those another worker holds), so each is handled by one transaction."""
    pick = (
        select(SessionAlert)
        .where(SessionAlert.handled_at.is_(None))
        .order_by(SessionAlert.created_at)
        .limit(limit)
    )
    if is_postgresql(db):
        pick = pick.with_for_update(skip_locked=True)
    alerts = list(await db.scalars(pick))
    if not alerts:
        return []
    sessions = {
        s.id: s
        for s in await db.scalars(
            select(DataSession).where(DataSession.id.in_({a.session_id for a in alerts}))
        )
    }
    return [(alert, sessions[alert.session_id]) for alert in alerts]


async def live_sessions_expiring_before(
    db: AsyncSession, before: datetime, limit: int
) -> list[str]:
    """Live sessions whose validity ends before `before` and whose `expiring` alert has not
    been noted."""
    noted = (
        select(SessionAlert.session_id)
        .where(SessionAlert.session_id == DataSession.id, SessionAlert.kind == AlertKind.EXPIRING)
        .exists()
    )
    rows = await db.scalars(
        select(DataSession.id)
        .where(
            DataSession.status.in_(LIVE_STATES),
            DataSession.expires_at.is_not(None),
            DataSession.expires_at <= before,
            DataSession.validity_seconds > EXPIRING_NOTICE_SECONDS,  # else: told at once
            ~noted,
        )
        .order_by(DataSession.expires_at)
        .limit(limit)
    )
    return list(rows)


async def of_purchase(db: AsyncSession, purchase_id: str) -> DataSession | None:
    return await db.scalar(select(DataSession).where(DataSession.purchase_id == purchase_id))
