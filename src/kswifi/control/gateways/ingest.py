"""Usage intake: a gateway's usage report, billed once, in one straight line (sessions, then
the gateway's lease rows, then any new grants)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.errors import (
    Unauthorized,
)
from kswifi.control.events import EventBus
from kswifi.control.gateways import desired, leases, repository
from kswifi.control.models import (
    LIVE_STATES,
    Gateway,
)
from kswifi.control.sessions import service as sessions_service
from kswifi.logs import get_logger
from kswifi.protocol import models as protocol

log = get_logger("kswifi.control.gateways")


async def apply_usage(
    db: AsyncSession,
    bus: EventBus,
    gateway: Gateway,
    report: protocol.UsageReport,
    now: datetime,
) -> protocol.UsageAck:
    """Apply one usage batch exactly once: a replayed or older sequence changes nothing."""
    locked = await repository.lock(db, gateway.id)  # one batch of a gateway at a time
    if locked is None:
        raise Unauthorized("Gateway token is not valid")
    if report.sequence <= locked.last_usage_sequence:
        return protocol.UsageAck(
            accepted=False, duplicate=True, last_sequence=locked.last_usage_sequence
        )
    totals: dict[str, tuple[int, int, bool]] = {}
    for delta in report.deltas:
        known = totals.get(delta.session_id)
        totals[delta.session_id] = (
            (delta.rx_bytes, delta.tx_bytes, delta.quota_exhausted)
            if known is None
            else (
                known[0] + delta.rx_bytes,
                known[1] + delta.tx_bytes,
                known[2] or delta.quota_exhausted,
            )
        )
    # A device that left the gateway (revoked, rotated onto another one) may have been served
    # bytes just before: a gateway that ever held a lease of the session may bill it. Sessions
    # it never carried stay refused.
    carried = await repository.accept_usage_batch(
        db,
        locked,
        sequence=report.sequence,
        received_at=now,
        served={session_id: rx + tx for session_id, (rx, tx, _) in totals.items()},
    )
    if carried is None:
        return protocol.UsageAck(
            accepted=False, duplicate=True, last_sequence=locked.last_usage_sequence
        )
    if len(carried) < len(totals):
        refused = sorted(set(totals) - carried)
        log.warning(
            "usage_refused_not_carried",
            gateway_id=locked.id,
            sequence=report.sequence,
            session_ids=refused[:20],
            refused_count=len(refused),
        )
    accepted = {session_id: totals[session_id] for session_id in sorted(carried)}

    flagged = [session_id for session_id, (_, _, exhausted) in accepted.items() if exhausted]
    exhaustion = await leases.note_exhausted(db, locked.id, flagged, now)
    outcomes = await sessions_service.record_usage_batch(
        db,
        bus,
        deltas=[
            sessions_service.UsageDelta(
                session_id,
                rx,
                tx,
                exhausted and exhaustion.ends_session(session_id),
                reserved_elsewhere=exhaustion.reserved_elsewhere(session_id),
            )
            for session_id, (rx, tx, exhausted) in accepted.items()
            if rx or tx or exhausted
        ],
        now=now,
    )
    ended: list[str] = []
    live: dict[str, sessions_service.SessionUsageOutcome] = {}
    # Sessions that ended (their devices moved on) or started their clock (the desired state
    # now carries their end): the gateways whose peers changed, and whose peers they are.
    bumped: set[str] = set()
    owners: set[str | None] = set()
    for outcome in outcomes:
        if outcome.status in LIVE_STATES:
            live[outcome.session_id] = outcome
        elif outcome.was_live:
            ended.append(outcome.session_id)
            bumped.add(locked.id)
            owners.add(outcome.user_id)
        if outcome.gateway_ids:
            bumped |= outcome.gateway_ids
            owners.add(outcome.user_id)
    if bumped:
        people = None if None in owners else {owner for owner in owners if owner is not None}
        await desired.bump_revision(db, bumped, bus, people)
    # Every accepted session's lease counts what was served (a new one gets its row); the
    # live ones are topped up.
    grants = await leases.record_served(
        db,
        locked.id,
        {session_id: rx + tx for session_id, (rx, tx, _) in accepted.items()},
        {session_id: (s.data_limit_bytes, s.used_bytes) for session_id, s in live.items()},
        now,
        bus,
    )
    return protocol.UsageAck(
        accepted=True,
        duplicate=False,
        last_sequence=report.sequence,
        leases=[
            protocol.LeaseGrant(session_id=session_id, quota_bytes=quota)
            for session_id, quota in sorted(grants.items())
        ],
    )
