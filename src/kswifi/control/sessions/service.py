"""Business rules of data sessions: limits, validity, usage and how a session ends."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.errors import NotFound, SessionNotUsable
from kswifi.control.events import (
    Event,
    EventBus,
    UsageFacts,
    publish_after_commit,
    publish_many_after_commit,
    session_channel,
)
from kswifi.control.models import (
    ENDED_STATES,
    LIVE_STATES,
    AlertKind,
    DataSession,
    Plan,
    SessionAlert,
    SessionStatus,
    UsageRollup,
    utcnow,
)
from kswifi.control.sessions import handover, repository
from kswifi.control.sessions.schemas import SessionOut
from kswifi.control.webhooks import service as webhooks
from kswifi.protocol import PACKET_BYTES

MIB = 1024 * 1024
GIB = 1024 * MIB
WARNING_PERCENTS = (80, 95)
ENDING_ALERTS: dict[str, AlertKind] = {
    SessionStatus.EXHAUSTED: AlertKind.DATA_USED_UP,
    SessionStatus.EXPIRED: AlertKind.EXPIRED,
}


@dataclass(frozen=True)
class NewSession:
    """A session just bought, and the gateways whose peers it changed (a person without a
    usable session is back online: their devices draw from it)."""

    session: DataSession
    gateway_ids: frozenset[str]


async def create_for_purchase(
    db: AsyncSession,
    *,
    user_id: str,
    purchase_id: str,
    plan: Plan,
    activation_days: int,
    now: datetime | None = None,
) -> NewSession:
    """A paid session with the plan's limits copied: later plan edits never change it. It is
    `queued` behind a session that can still carry traffic, else current at once."""
    now = now or utcnow()
    await handover.lock_person(db, user_id)
    others = await repository.usable_sessions_of_user(db, user_id)
    session = DataSession(
        user_id=user_id,
        plan_id=plan.id,
        purchase_id=purchase_id,
        plan_code=plan.code,
        plan_name=plan.name,
        status=handover.first_status(others, now),
        data_limit_bytes=plan.data_limit_bytes,
        speed_mbps=plan.speed_mbps,
        validity_seconds=plan.validity_days * 86_400,
        max_devices=plan.max_devices,
        used_bytes=0,
        rx_bytes=0,
        tx_bytes=0,
        created_at=now,
        activation_deadline=now + timedelta(days=activation_days),
    )
    db.add(session)
    await db.flush()
    moved = await handover.hand_over(db, user_id, now)
    assert moved is not None  # waited for
    return NewSession(session, moved.gateway_ids)


async def get(db: AsyncSession, session_id: str) -> DataSession:
    session = await repository.get(db, session_id)
    if session is None:
        raise NotFound("No such session")
    return session


async def of_purchase(db: AsyncSession, purchase_id: str) -> DataSession | None:
    """The session a purchase paid for (None while it is unpaid)."""
    return await repository.of_purchase(db, purchase_id)


async def get_for_user(db: AsyncSession, user_id: str, session_id: str) -> DataSession:
    """The user's own session; someone else's answers exactly like a missing one."""
    session = await repository.get(db, session_id)
    if session is None or session.user_id != user_id:
        raise NotFound("No such session")
    return session


async def list_for_user(db: AsyncSession, user_id: str) -> list[DataSession]:
    return await repository.list_for_user(db, user_id)


def effective_status(session: DataSession, now: datetime) -> str:
    """The stored status, or `expired` once the clock has passed a live session's end."""
    if session.status in LIVE_STATES and _time_is_up(session, now):
        return SessionStatus.EXPIRED
    return session.status


def _time_is_up(session: DataSession, now: datetime) -> bool:
    if session.expires_at is not None:
        return session.expires_at <= now
    return session.activated_at is None and session.activation_deadline <= now


ENDED_MESSAGES: dict[str, str] = {
    SessionStatus.EXHAUSTED: "This session's data is used up. Buy a new session to keep "
    "browsing: your devices stay set up and use it by themselves, no new code.",
    SessionStatus.EXPIRED: "This session has expired. Buy a new session to keep browsing: "
    "your devices stay set up and use it by themselves, no new code.",
    SessionStatus.REVOKED: "This session was cancelled.",
}
"""What a person reads when a session is over (the API's errors and the web pages)."""


def ensure_usable(session: DataSession, now: datetime) -> None:
    """Refuse a session that can no longer carry traffic."""
    status = effective_status(session, now)
    if status in ENDED_MESSAGES:
        raise SessionNotUsable(ENDED_MESSAGES[status], status=status)
    if session.used_bytes >= session.data_limit_bytes:
        raise SessionNotUsable(
            ENDED_MESSAGES[SessionStatus.EXHAUSTED], status=SessionStatus.EXHAUSTED
        )


def start_clock(session: DataSession, now: datetime) -> None:
    """The session's first byte went through a gateway: its validity period starts."""
    if session.activated_at is None:
        session.activated_at = now
        session.expires_at = now + timedelta(seconds=session.validity_seconds)
        if session.status == SessionStatus.ACTIVE:
            session.status = SessionStatus.CONNECTED


async def mark_connected(
    db: AsyncSession, session_id: str, now: datetime, bus: EventBus | None = None
) -> None:
    """The gateway saw a handshake: the app shows "Connect Profile Active" at once."""
    session = await repository.get(db, session_id)
    if session is None:
        return
    session.last_seen_at = now
    if session.status == SessionStatus.ACTIVE and not _time_is_up(session, now):
        session.status = SessionStatus.CONNECTED
        if bus is not None:
            publish_after_commit(db, bus, session_channel(session.id), usage_facts(session, now))


@dataclass(frozen=True)
class UsageDelta:
    """Bytes a gateway counted for one session since its last report."""

    session_id: str
    rx_bytes: int
    tx_bytes: int
    quota_exhausted: bool = False
    """The gateway's kernel quota dropped a packet and no other gateway holds one's worth."""
    reserved_elsewhere: int = 0
    """Bytes of the session other gateways may still serve: with `quota_exhausted`, the
    session ends only when its budget less these cannot carry a full packet (budget that is
    free but not yet leased tops the gateway up instead)."""


@dataclass(frozen=True)
class SessionUsageOutcome:
    """One session after a usage batch: its status now (`exhausted` if the batch ended it),
    whether it was live before, and its budget."""

    session_id: str
    status: str
    was_live: bool
    used_bytes: int
    data_limit_bytes: int
    gateway_ids: frozenset[str] = frozenset()
    """Gateways whose peers changed: it ended and its devices moved on, or its clock started
    with this batch (their desired state now carries its end)."""
    user_id: str | None = None  # the owner, when `gateway_ids` has any


async def record_usage_batch(
    db: AsyncSession, bus: EventBus, *, deltas: Sequence[UsageDelta], now: datetime
) -> list[SessionUsageOutcome]:
    """Add many sessions' counted bytes set-based; end those whose data is used up.

    One statement for the sessions and their minute rollups (PostgreSQL), one UPDATE per
    warning threshold crossed; only sessions that end here are loaded (to `end` them). After
    commit, in one `publish_many`: per session its `UsageFacts` (the `usage` event, rendered
    only by a stream that shows it), then any `warning` events; then the `exhausted` events of
    the sessions that ended. Deltas of one session are summed;
    unknown sessions are left out of the result.
    """
    totals: dict[str, tuple[int, int, bool]] = {}
    elsewhere: dict[str, int] = {}
    for delta in deltas:
        if delta.rx_bytes < 0 or delta.tx_bytes < 0:
            raise ValueError("usage deltas are never negative")
        rx, tx, exhausted = totals.get(delta.session_id, (0, 0, False))
        totals[delta.session_id] = (
            rx + delta.rx_bytes,
            tx + delta.tx_bytes,
            exhausted or delta.quota_exhausted,
        )
        elsewhere[delta.session_id] = max(
            elsewhere.get(delta.session_id, 0), delta.reserved_elsewhere
        )
    if not totals:
        return []
    rows = await repository.add_usage_batch(
        db, {session_id: (rx, tx) for session_id, (rx, tx, _) in totals.items()}, now
    )
    # A session's first bytes start its clock (the few sessions starting in this batch).
    changed: dict[str, frozenset[str]] = {}
    owners: dict[str, str] = {}
    first_use = [
        row.id
        for row in rows
        if row.expires_at is None and row.status in LIVE_STATES and sum(totals[row.id][:2]) > 0
    ]
    if first_use:
        started: dict[str, DataSession] = {}
        for starting in await repository.not_started(db, first_use):
            start_clock(starting, now)
            started[starting.id] = starting
            owners[starting.id] = starting.user_id
            changed[starting.id] = frozenset(await repository.gateways_carrying(db, starting.id))
        rows = [
            row._replace(expires_at=started[row.id].expires_at, status=started[row.id].status)
            if row.id in started
            else row
            for row in rows
        ]
    events: list[Event] = []
    warned: dict[str, int] = {}
    ending: list[str] = []
    at = now.isoformat()
    for row in rows:
        channel = session_channel(row.id)
        events.append((channel, usage_facts(row, now, at=at)))
        if row.status not in LIVE_STATES:
            continue
        percent = usage_percent(row)
        for threshold in WARNING_PERCENTS:
            if percent >= threshold > row.warned_percent:
                warned[row.id] = threshold
                events.append(
                    (
                        channel,
                        {
                            "type": "warning",
                            "session_id": row.id,
                            "percent": threshold,
                            "message": f"You have used {threshold}% of this session's data.",
                        },
                    )
                )
        free = row.data_limit_bytes - row.used_bytes - elsewhere[row.id]
        if row.used_bytes >= row.data_limit_bytes or (totals[row.id][2] and free < PACKET_BYTES):
            ending.append(row.id)
    await repository.set_warned_percents(db, warned)
    # A session that runs out in this batch gets "used up", not also "95 % used".
    running_out = set(ending)
    await repository.note_alerts(
        db,
        [(sid, f"usage_{percent}") for sid, percent in warned.items() if sid not in running_out],
        now,
    )
    # One publish for the whole batch; the `exhausted` events of `end` follow it.
    publish_many_after_commit(db, bus, events)

    ended: dict[str, str] = {}
    for session_id in ending:
        session = await repository.get(db, session_id, fresh=True)
        if session is not None:
            moved = await end(
                db, bus, session, SessionStatus.EXHAUSTED, "data_used_up", now, wait=False
            )
            ended[session_id] = session.status
            owners[session_id] = session.user_id
            changed[session_id] = changed.get(session_id, frozenset()) | moved
    return [
        SessionUsageOutcome(
            session_id=row.id,
            status=ended.get(row.id, row.status),
            was_live=row.status in LIVE_STATES,
            used_bytes=row.used_bytes,
            data_limit_bytes=row.data_limit_bytes,
            gateway_ids=changed.get(row.id, frozenset()),
            user_id=owners.get(row.id),
        )
        for row in rows
    ]


async def end(
    db: AsyncSession,
    bus: EventBus,
    session: DataSession,
    status: str,
    reason: str,
    now: datetime,
    *,
    wait: bool = True,
) -> frozenset[str]:
    """End a current or queued session for good. Its devices move on to the person's next
    session (or the garden): the gateways whose peers changed, for their desired state.
    Without `wait`, see `handover.hand_over` (the gateways carrying it are still named)."""
    if status not in ENDED_STATES:
        raise ValueError(f"{status!r} is not an ending state")
    if session.status not in (*LIVE_STATES, SessionStatus.QUEUED):
        return frozenset()
    session.status = status
    session.end_reason = reason
    session.ended_at = now
    await db.flush()
    if status in ENDING_ALERTS:
        await repository.note_alerts(db, [(session.id, ENDING_ALERTS[status])], now)
    webhooks.record(
        db,
        "session.ended",
        {
            "session_id": session.id,
            "user_id": session.user_id,
            "plan_code": session.plan_code,
            "status": status,
            "reason": reason,
            "used_bytes": session.used_bytes,
            "data_limit_bytes": session.data_limit_bytes,
        },
        now=now,
    )
    publish_after_commit(
        db,
        bus,
        session_channel(session.id),
        {"type": status, "session_id": session.id, "reason": reason, **usage_fields(session)},
    )
    carrying = frozenset(await repository.gateways_carrying(db, session.id))
    moved = await handover.hand_over(db, session.user_id, now, wait=wait)
    if moved is None:
        return carrying
    if moved.promoted is not None:
        publish_after_commit(
            db, bus, session_channel(moved.promoted.id), usage_facts(moved.promoted, now)
        )
    return carrying | moved.gateway_ids


async def end_all_for_user(
    db: AsyncSession, bus: EventBus, user_id: str, reason: str, now: datetime
) -> list[str]:
    """Revoke every current and queued session of a person (oldest first); their ids."""
    ended: list[str] = []
    for session in await repository.usable_sessions_of_user(db, user_id):
        await end(db, bus, session, SessionStatus.REVOKED, reason, now)
        ended.append(session.id)
    return ended


async def extend(
    session: DataSession,
    days: int,
    now: datetime,
    *,
    db: AsyncSession | None = None,
    bus: EventBus | None = None,
) -> frozenset[str]:
    """Operator extension: more validity (an expired session comes back to life, and takes
    its turn again: oldest purchase first).

    With `db` and `bus`, open usage streams get the new end time once it is committed; with
    `db`, the gateways whose desired state changed.
    """
    if days <= 0:
        raise ValueError("days must be positive")
    if session.expires_at is None:  # its clock has not started: more time to start it
        session.activation_deadline = max(session.activation_deadline, now) + timedelta(days=days)
    else:
        session.expires_at = max(session.expires_at, now) + timedelta(days=days)
    if session.status == SessionStatus.EXPIRED and session.used_bytes < session.data_limit_bytes:
        session.status = SessionStatus.ACTIVE
        session.ended_at = None
        session.end_reason = None
    if db is None:
        return frozenset()
    carrying = await repository.gateways_carrying(db, session.id)
    moved = await handover.hand_over(db, session.user_id, now)
    assert moved is not None  # waited for
    if bus is not None:
        publish_after_commit(db, bus, session_channel(session.id), usage_facts(session, now))
    return frozenset(carrying) | moved.gateway_ids


async def hand_over_pending(db: AsyncSession, now: datetime) -> handover.Moved:
    """Worker job, see `handover.hand_over_pending`."""
    return await handover.hand_over_pending(db, now)


async def hand_over(db: AsyncSession, user_id: str, now: datetime) -> frozenset[str]:
    """After a person's devices changed (one set up or removed): which session each draws
    from; the gateways whose peers changed."""
    moved = await handover.hand_over(db, user_id, now)
    assert moved is not None  # waited for
    return moved.gateway_ids


async def lock_person(db: AsyncSession, user_id: str) -> None:
    await handover.lock_person(db, user_id)


async def usable_sessions(db: AsyncSession, user_id: str, now: datetime) -> list[DataSession]:
    """The person's current session (if any) first, then the queued ones, oldest first."""
    usable = [
        session
        for session in await repository.usable_sessions_of_user(db, user_id)
        if session.status == SessionStatus.QUEUED or handover.can_carry(session, now)
    ]
    return sorted(usable, key=lambda session: session.status == SessionStatus.QUEUED)


async def due_for_expiry(db: AsyncSession, now: datetime, limit: int = 500) -> list[DataSession]:
    return await repository.list_due_for_expiry(db, now, limit)


# --- alerts: noted here, where they become true; sent by the notify domain -----------------


async def note_expiring(db: AsyncSession, now: datetime, limit: int = 500) -> int:
    """Note the `expiring` alert of live sessions whose validity ends within a day."""
    horizon = now + timedelta(seconds=repository.EXPIRING_NOTICE_SECONDS)
    due = await repository.live_sessions_expiring_before(db, horizon, limit)
    await repository.note_alerts(db, [(session_id, AlertKind.EXPIRING) for session_id in due], now)
    return len(due)


async def claim_pending_alerts(
    db: AsyncSession, limit: int = 200
) -> list[tuple[SessionAlert, DataSession]]:
    """Alerts to send, each with its session; set `handled_at` in the same transaction."""
    return await repository.claim_pending_alerts(db, limit)


_Usage = DataSession | repository.UsageRow
_Amounts = _Usage | UsageFacts  # whatever has `used_bytes` and `data_limit_bytes`


def remaining_bytes(session: _Usage) -> int:
    return max(0, session.data_limit_bytes - session.used_bytes)


def usage_percent(session: _Amounts) -> float:
    if session.data_limit_bytes <= 0:
        return 100.0
    return round(min(100.0, 100.0 * session.used_bytes / session.data_limit_bytes), 2)


def format_gb(num_bytes: int) -> str:
    """Bytes as the app shows them: "2.1 GB", "5 GB", "350 MB" (1 GB = 1024 MB)."""
    if num_bytes >= GIB or num_bytes == 0:
        value = num_bytes / GIB
        text = f"{value:.1f}".rstrip("0").rstrip(".")
        return f"{text} GB"
    value = num_bytes / MIB
    text = f"{value:.1f}".rstrip("0").rstrip(".") if value < 10 else f"{value:.0f}"
    return f"{text} MB"


def usage_text(used_bytes: int, limit_bytes: int) -> str:
    """ "2.1 GB of 5 GB used" — never more used than bought; nothing yet is said in the
    limit's unit ("0 MB of 500 MB used")."""
    used = min(used_bytes, limit_bytes)
    used_text = "0 MB" if used == 0 and limit_bytes < GIB else format_gb(used)
    return f"{used_text} of {_format_limit(limit_bytes)} used"


# A session's limit is one of a few plan sizes, shown in every usage event: formatted once.
_format_limit = functools.lru_cache(maxsize=256)(format_gb)


def usage_fields(session: _Usage) -> dict[str, Any]:
    used, limit = session.used_bytes, session.data_limit_bytes
    return {
        "used_bytes": used,
        "remaining_bytes": max(0, limit - used),
        "data_limit_bytes": limit,
        "usage_percent": usage_percent(session),
        "usage_text": usage_text(used, limit),
    }


def usage_facts(session: _Usage, now: datetime, *, at: str | None = None) -> UsageFacts:
    """The facts of a session's `usage` event; `at`: `now.isoformat()` when the caller has it."""
    expires_at = session.expires_at
    return UsageFacts(
        session.id,
        session.status,
        session.used_bytes,
        session.data_limit_bytes,
        None if expires_at is None else expires_at.isoformat(),
        None if expires_at is None else max(0, int((expires_at - now).total_seconds())),
        now.isoformat() if at is None else at,
    )


def to_out(session: DataSession, now: datetime) -> SessionOut:
    seconds_left = None
    if session.expires_at is not None:
        seconds_left = max(0, int((session.expires_at - now).total_seconds()))
    return SessionOut(
        id=session.id,
        status=effective_status(session, now),
        plan_code=session.plan_code,
        plan_name=session.plan_name,
        data_limit_bytes=session.data_limit_bytes,
        data_limit_mb=session.data_limit_bytes // MIB,
        used_bytes=min(session.used_bytes, session.data_limit_bytes),
        remaining_bytes=remaining_bytes(session),
        usage_percent=usage_percent(session),
        usage_text=usage_text(session.used_bytes, session.data_limit_bytes),
        speed_mbps=session.speed_mbps,
        max_devices=session.max_devices,
        created_at=session.created_at,
        activation_deadline=session.activation_deadline,
        activated_at=session.activated_at,
        expires_at=session.expires_at,
        seconds_left=seconds_left,
        starts=_starts(session),
    )


STARTS_ON_FIRST_USE = "When your phone first connects"
STARTS_AFTER_CURRENT = "After your current session, when your phone uses it"


def _starts(session: DataSession) -> str | None:
    if session.expires_at is not None or session.status in ENDED_STATES:
        return None
    if session.status == SessionStatus.QUEUED:
        return STARTS_AFTER_CURRENT
    return STARTS_ON_FIRST_USE


async def usage_history(
    db: AsyncSession, session: DataSession, since: datetime | None = None
) -> list[UsageRollup]:
    """Per-minute byte counts of one session, oldest first."""
    return await repository.rollups(db, session.id, since)
