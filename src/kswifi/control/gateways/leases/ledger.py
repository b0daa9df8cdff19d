"""The lease ledger: what each gateway may serve of a session, planned from the lease rows
(`rules` holds the arithmetic, `repository` the queries, this module the steps around them).

Each caller makes one call per step: a desired state (`for_desired_state`), a usage report
(`note_exhausted` before billing, `record_served` after), a heartbeat (`release_holds`), an
agent asking for more (`grant`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.events import EventBus, gateway_channel, publish_after_commit
from kswifi.control.gateways import repository
from kswifi.control.gateways.leases import repository as lease_repository
from kswifi.control.gateways.leases import rules
from kswifi.control.models import (
    LIVE_STATES,
    Gateway,
)
from kswifi.logs import get_logger
from kswifi.protocol import models as protocol

log = get_logger("kswifi.control.gateways")


async def _refresh(
    db: AsyncSession,
    gateway_id: str,
    budgets: dict[str, tuple[int, int]],
    *,
    carriers: dict[str, set[str]],
    rows: list[lease_repository.LeaseRow],
    now: datetime,
    bus: EventBus | None,
    delivered_revision: int | None = None,
) -> dict[str, int]:
    """Top up `gateway_id`'s leases of the sessions in `budgets` ((limit, used) per session)
    and release those of gateways that stopped carrying them; its cumulative grant per session.

    A session only this gateway carries is its alone to lease. A shared one (or one whose
    other leases change) is recomputed under a lock of its row, so two gateways topping up at
    once never hand out the same bytes twice.

    A lowered lease stays held (reserved) until its gateway applied it: the gateway that asks
    gets it with this answer when `delivered_revision` says at which revision (a desired
    state); any other gateway whose lease was lowered is told to fetch its desired state,
    which delivers it (see `desired_state`).

    A gateway that served a session nothing for `rules.IDLE_SECONDS` (nor dropped its
    packets at the quota) is idle: it gets no top-up, and gives back its whole unused lease
    when a gateway in use runs short.
    """
    if not budgets:
        return {}
    held = _leases_by_session(rows)
    missing = [sid for sid in budgets if gateway_id not in held.get(sid, {})]
    if missing:
        await lease_repository.ensure_leases(db, [(gateway_id, sid) for sid in missing], now)
        held.update(_leases_by_session(await lease_repository.leases_of(db, missing)))
    budgets = dict(budgets)
    # Idleness only matters between carriers, and every shared session is planned again
    # below from fresh rows: the first pass leaves it out.
    plans = {
        session_id: _plan_leases(budget, held[session_id], carriers.get(session_id), gateway_id)
        for session_id, budget in budgets.items()
    }
    contested = [
        session_id
        for session_id, plan in plans.items()
        if len(carriers.get(session_id, set()) | {gateway_id}) > 1
        or any(
            other_id != gateway_id and lease != held[session_id][other_id]
            for other_id, lease in plan.items()
        )
    ]
    if contested:
        budgets.update(await repository.lock_session_budgets(db, contested))
        fresh_rows = await lease_repository.leases_of(db, contested)
        fresh = _leases_by_session(fresh_rows)
        idle = _idle_by_session(fresh_rows, now)
        for session_id in contested:
            held[session_id] = fresh.get(session_id, {})
            plans[session_id] = _plan_leases(
                budgets[session_id],
                held[session_id],
                carriers.get(session_id),
                gateway_id,
                idle.get(session_id),
            )
    changes: list[lease_repository.GrantChange] = []
    told: set[str] = set()
    for session_id, plan in plans.items():
        for other_id, lease in plan.items():
            before = held[session_id][other_id]
            if lease == before:
                continue
            until: int | None = None  # a hold that stays as it was
            if lease.held_bytes == 0:
                until = 0
            elif lease.granted_bytes < before.granted_bytes:
                if other_id == gateway_id and delivered_revision is not None:
                    until = delivered_revision
                else:
                    until = 0  # not delivered yet: its desired state stamps the revision
                    told.add(other_id)
            changes.append(
                lease_repository.GrantChange(
                    other_id, session_id, lease.granted_bytes, lease.held_bytes, until
                )
            )
    await lease_repository.set_granted(db, changes, now)
    if bus is not None:
        for other_id in sorted(told):
            publish_after_commit(db, bus, gateway_channel(other_id), {"type": "leases"})
    return {session_id: plan[gateway_id].granted_bytes for session_id, plan in plans.items()}


def _leases_by_session(
    rows: Iterable[lease_repository.LeaseRow],
) -> dict[str, dict[str, rules.Lease]]:
    by_session: dict[str, dict[str, rules.Lease]] = {}
    for row in rows:
        by_session.setdefault(row.session_id, {})[row.gateway_id] = rules.Lease(
            row.granted_bytes, row.used_bytes, row.held_bytes
        )
    return by_session


def _idle_by_session(
    rows: Iterable[lease_repository.LeaseRow], now: datetime
) -> dict[str, set[str]]:
    """Per session, the gateways that served it nothing for `rules.IDLE_SECONDS`."""
    cutoff = now - timedelta(seconds=rules.IDLE_SECONDS)
    idle: dict[str, set[str]] = {}
    for row in rows:
        if row.served_at is None or row.served_at < cutoff:
            idle.setdefault(row.session_id, set()).add(row.gateway_id)
    return idle


def _plan_leases(
    budget: tuple[int, int],
    held: dict[str, rules.Lease],
    carriers: set[str] | None,
    gateway_id: str,
    idle: set[str] | None = None,
) -> dict[str, rules.Lease]:
    limit_bytes, used_bytes = budget
    if (carriers or set()) <= {gateway_id} and held.keys() == {gateway_id}:
        # The common case, a session only this gateway ever carried: skip the general plan.
        own = held[gateway_id]
        granted = rules.sole_carrier_grant(limit_bytes, used_bytes, own.used_bytes)
        return {gateway_id: own if own.granted_bytes == granted else own.regrant(granted)}
    return rules.plan_session_leases(
        limit_bytes=limit_bytes,
        used_total_bytes=used_bytes,
        leases=held,
        carriers=(carriers or set()) | {gateway_id},
        requesting=[gateway_id],
        idle=idle or (),
    )


async def grant(
    db: AsyncSession,
    gateway: Gateway,
    session_ids: Iterable[str],
    now: datetime,
    bus: EventBus | None = None,
) -> protocol.LeaseResponse:
    """Top up the gateway's leases of the given sessions. Sessions it does not carry, or that
    are no longer live, get no grant (the agent drops them with the next desired state)."""
    await repository.lock(db, gateway.id)  # leases change: see `repository.lock`
    wanted = set(session_ids)
    carried = await repository.carriers_of(db, wanted)
    budgets = {
        session_id: (session.data_limit_bytes, session.used_bytes)
        for session_id, session in (await repository.sessions_by_id(db, wanted)).items()
        if gateway.id in carried.get(session_id, set())
        and session.status in LIVE_STATES
        and (session.expires_at is None or session.expires_at > now)
    }
    quotas = await _refresh(
        db,
        gateway.id,
        budgets,
        carriers=carried,
        rows=await lease_repository.leases_of(db, budgets),
        now=now,
        bus=bus,
    )
    refused = wanted - set(budgets)
    if refused:
        log.info("lease_refused", gateway_id=gateway.id, session_count=len(refused))
    return protocol.LeaseResponse(
        revision=gateway.revision,
        leases=[
            protocol.LeaseGrant(session_id=session_id, quota_bytes=quota)
            for session_id, quota in sorted(quotas.items())
        ],
    )


async def has_undelivered_holds(db: AsyncSession, gateway_id: str) -> bool:
    """Whether a lease of the gateway was lowered and its desired state has not said so yet
    (a long-poll answers at once: the bytes are free only once the gateway applied it)."""
    return await lease_repository.has_undelivered_holds(db, gateway_id)


@dataclass(frozen=True)
class DesiredLeases:
    """The leases a desired state carries, and whether it must be a new revision."""

    quotas: dict[str, int]
    new_revision: bool  # it delivers a hold or changes a grant the gateway holds
    report_applied: bool  # the gateway reports this revision applied: it frees held bytes
    shared: frozenset[str] = frozenset()  # sessions other gateways carry or hold leases of


async def stamp_for_desired_state(
    db: AsyncSession, gateway_id: str, next_revision: int
) -> list[str]:
    """Stamp the gateway's undelivered holds with `next_revision` (the desired state about to
    be sent delivers them); their sessions. The caller holds the gateway's row lock."""
    return await lease_repository.stamp_holds(db, gateway_id, next_revision)


async def for_desired_state(
    db: AsyncSession,
    gateway_id: str,
    next_revision: int,
    peers: Sequence[repository.PeerRow],
    now: datetime,
    bus: EventBus | None,
    *,
    stamped: Sequence[str] | None = None,
) -> DesiredLeases:
    """Stamp the gateway's undelivered holds with `next_revision` and top up its lease of
    every session its peers draw from. The caller holds the gateway's row lock.

    `peers` are all the gateway's peers, or, with `stamped` (the sessions whose holds the
    caller stamped with `stamp_for_desired_state`), a part of them: then only their sessions
    are planned, and the queries read those sessions alone."""
    if stamped is None:
        delivered_holds = await stamp_for_desired_state(db, gateway_id, next_revision)
    else:
        delivered_holds = list(stamped)
    budgets: dict[str, tuple[int, int]] = {}
    own: list[lease_repository.LeaseRow] = []
    for row in peers:
        if row.session_id is None or row.data_limit_bytes is None or row.used_bytes is None:
            continue  # in the garden: no session, no lease
        budgets[row.session_id] = (row.data_limit_bytes, row.used_bytes)
        if row.lease_granted_bytes is not None and row.lease_used_bytes is not None:
            own.append(
                lease_repository.LeaseRow(
                    gateway_id,
                    row.session_id,
                    row.lease_granted_bytes,
                    row.lease_used_bytes,
                    row.lease_held_bytes or 0,
                    row.lease_served_at,
                )
            )
    if stamped is None:
        carriers = await repository.other_carriers(db, gateway_id)
        others = await lease_repository.other_leases_of_sessions_carried_by(db, gateway_id)
    else:
        carriers = await repository.other_carriers_of(db, gateway_id, budgets)
        others = await lease_repository.other_leases_of(db, gateway_id, budgets)
    stored = {row.session_id: row.granted_bytes for row in own}
    quotas = await _refresh(
        db,
        gateway_id,
        budgets,
        carriers=carriers,
        rows=own + others,
        now=now,
        bus=bus,
        delivered_revision=next_revision,
    )
    # A first lease of a new peer comes with the revision that added the peer.
    changed = [
        (stored[sid], quota) for sid, quota in quotas.items() if stored.get(sid, quota) != quota
    ]
    lowered = any(quota < before for before, quota in changed)
    return DesiredLeases(
        quotas=quotas,
        new_revision=bool(delivered_holds or changed),
        report_applied=bool(delivered_holds or lowered),
        shared=frozenset(carriers) | {row.session_id for row in others},
    )


async def release_holds(
    db: AsyncSession, gateway_id: str, applied_revision: int, bus: EventBus | None
) -> None:
    """The gateway applied `applied_revision`: the bytes of leases it lowered before are free,
    and the co-carriers of those sessions are told to fetch their top-ups."""
    freed = await lease_repository.release_holds(db, gateway_id, applied_revision)
    if freed and bus is not None:
        carriers = await repository.carriers_of(db, freed)
        for other_id in sorted(set().union(*carriers.values()) - {gateway_id}):
            publish_after_commit(db, bus, gateway_channel(other_id), {"type": "leases"})


@dataclass(frozen=True)
class Exhaustion:
    """What a gateway's "quota exhausted" means for each session it flagged."""

    gateway_id: str
    held: dict[str, dict[str, rules.Lease]]

    def reserved_elsewhere(self, session_id: str) -> int:
        """Bytes of the session the other gateways may still serve."""
        return rules.total_reserved(
            lease
            for other, lease in self.held.get(session_id, {}).items()
            if other != self.gateway_id
        )

    def ends_session(self, session_id: str) -> bool:
        """Whether the gateway's kernel saying "quota exhausted" means the SESSION is
        exhausted: only when no other gateway holds enough of it for a full packet. A gateway
        whose lease is a share (or nothing: the rest is leased elsewhere) only used up that
        share; it asks for more, and the session goes on on the other gateways. Each gateway's
        quota ends at most one packet short of its lease, so a shared session ends at most that
        short per gateway."""
        return all(
            lease.reserved_bytes < rules.PACKET_BYTES
            for other, lease in self.held.get(session_id, {}).items()
            if other != self.gateway_id
        )


async def note_exhausted(
    db: AsyncSession, gateway_id: str, session_ids: Sequence[str], now: datetime
) -> Exhaustion:
    """Before billing a report: the leases of the sessions whose packets the gateway's kernel
    dropped at the quota, which count as in use even if nothing was served."""
    if not session_ids:
        return Exhaustion(gateway_id, {})
    held = _leases_by_session(await lease_repository.leases_of(db, session_ids))
    await lease_repository.mark_served(db, gateway_id, session_ids, now)
    return Exhaustion(gateway_id, held)


async def record_served(
    db: AsyncSession,
    gateway_id: str,
    served: Mapping[str, int],
    live: Mapping[str, tuple[int, int]],
    now: datetime,
    bus: EventBus | None,
) -> dict[str, int]:
    """After billing a report: count what the gateway served against its leases ({session:
    bytes}, 0 allowed; a lease row is made for a session it did not hold yet) and top up its
    leases of the sessions still `live` ({session: (limit, used)}); its grants."""
    usage = await lease_repository.add_lease_usage(db, gateway_id, served, now, others_of=live)
    return await _refresh(
        db,
        gateway_id,
        dict(live),
        carriers=usage.other_carriers,
        rows=[row for row in usage.own if row.session_id in live] + usage.others,
        now=now,
        bus=bus,
    )
