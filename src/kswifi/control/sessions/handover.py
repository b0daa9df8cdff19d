"""Which session each of a person's devices draws from: one rule, applied after anything
that changes a person's sessions or devices (a purchase, a session ending, a device set up or
removed).

A person's sessions are consumed one at a time, oldest purchase first. The *current* session
is the oldest live one that can still carry traffic; with none, the oldest queued one becomes
current (its activation window starts again from now). The person's installed devices draw
from the current session up to its device limit (those already on it keep their places, then
first installed first); the others, and every
device of a person without a usable session, draw from nothing: they stay peers of their
gateway in the walled garden, with the same keys, until a session is there for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.models import LIVE_STATES, AlertKind, DataSession, SessionStatus
from kswifi.control.sessions import repository
from kswifi.control.users import service as users


@dataclass(frozen=True)
class Handover:
    """The outcome for one person: their current session (None: the garden) and the gateways
    whose peers changed (their desired state must say so)."""

    current: DataSession | None
    gateway_ids: frozenset[str]
    promoted: DataSession | None = None


def can_carry(session: DataSession, now: datetime) -> bool:
    """A live session whose data and time are not used up."""
    if session.status not in LIVE_STATES or session.used_bytes >= session.data_limit_bytes:
        return False
    if session.expires_at is not None:
        return session.expires_at > now
    return session.activated_at is not None or session.activation_deadline > now


def first_status(others: list[DataSession], now: datetime) -> SessionStatus:
    """The status a new purchase starts in: queued behind a session that can still carry
    traffic, else current at once."""
    if any(can_carry(session, now) for session in others):
        return SessionStatus.QUEUED
    return SessionStatus.ACTIVE


async def lock_person(db: AsyncSession, user_id: str) -> None:
    """Take the person's lock (before any of their sessions' or devices' rows)."""
    await users.lock(db, user_id)


async def hand_over(
    db: AsyncSession, user_id: str, now: datetime, *, wait: bool = True
) -> Handover | None:
    """Apply the rule to one person (takes their lock). Without `wait` (usage intake, which
    holds gateway and session rows that a profile generation may wait for while holding the
    person's lock), None when the lock is taken: the worker's `hand_over_pending` does it
    within a second."""
    if wait:
        await users.lock(db, user_id)
    elif not await users.try_lock(db, user_id):
        return None
    sessions = await repository.usable_sessions_of_user(db, user_id)
    current = next((s for s in sessions if can_carry(s, now)), None)
    promoted: DataSession | None = None
    if current is None:
        current = next((s for s in sessions if s.status == SessionStatus.QUEUED), None)
        if current is not None:
            window = current.activation_deadline - current.created_at
            current.status = SessionStatus.ACTIVE
            current.activation_deadline = max(current.activation_deadline, now + window)
            promoted = current
            await repository.note_alerts(db, [(current.id, AlertKind.NEXT_STARTED)], now)
    # Devices already drawing from the current session keep their places (one that is on is
    # never switched off for one installed later); then first installed first.
    devices = sorted(
        await repository.active_devices_of_user(db, user_id),
        key=lambda device: current is None or device.session_id != current.id,
    )
    slots = current.max_devices if current is not None else 0
    gateway_ids: set[str] = set()
    for index, device in enumerate(devices):
        wanted = current.id if current is not None and index < slots else None
        if device.session_id != wanted:
            device.session_id = wanted
            gateway_ids.add(device.gateway_id)
    await db.flush()
    return Handover(current, frozenset(gateway_ids), promoted)


@dataclass(frozen=True)
class Moved:
    """The gateways whose peers changed, and whose peers they are."""

    gateway_ids: frozenset[str]
    user_ids: frozenset[str]


async def hand_over_pending(db: AsyncSession, now: datetime, limit: int = 200) -> Moved:
    """Worker job: the people a hand-over was left for (devices still drawing from a session
    that ended or ran out of time, or in the garden while a session could carry them); the
    gateways whose peers changed, and the people they changed for."""
    gateway_ids: set[str] = set()
    user_ids: set[str] = set()
    for user_id in await repository.users_needing_handover(db, now, limit):
        moved = await hand_over(db, user_id, now)
        if moved is not None and moved.gateway_ids:
            gateway_ids |= moved.gateway_ids
            user_ids.add(user_id)
    return Moved(frozenset(gateway_ids), frozenset(user_ids))
