"""The lease ledger: what each gateway may serve of a session, planned from the lease rows
(`leases` holds the arithmetic, this module the reads and writes around it)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.events import EventBus, gateway_channel, publish_after_commit
from kswifi.control.gateways import lease_repository, leases, repository
from kswifi.control.models import (
    LIVE_STATES,
    Gateway,
)
from kswifi.logs import get_logger
from kswifi.protocol import models as protocol

log = get_logger("kswifi.control.gateways")


async def refresh(
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

    A gateway that served a session nothing for `leases.IDLE_SECONDS` (nor dropped its
    packets at the quota) is idle: it gets no top-up, and gives back its whole unused lease
    when a gateway in use runs short.
    """
    if not budgets:
        return {}
    held = leases_by_session(rows)
    missing = [sid for sid in budgets if gateway_id not in held.get(sid, {})]
    if missing:
        await lease_repository.ensure_leases(db, [(gateway_id, sid) for sid in missing], now)
        held.update(leases_by_session(await lease_repository.leases_of(db, missing)))
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
        fresh = leases_by_session(fresh_rows)
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


def leases_by_session(
    rows: Iterable[lease_repository.LeaseRow],
) -> dict[str, dict[str, leases.Lease]]:
    by_session: dict[str, dict[str, leases.Lease]] = {}
    for row in rows:
        by_session.setdefault(row.session_id, {})[row.gateway_id] = leases.Lease(
            row.granted_bytes, row.used_bytes, row.held_bytes
        )
    return by_session


def _idle_by_session(
    rows: Iterable[lease_repository.LeaseRow], now: datetime
) -> dict[str, set[str]]:
    """Per session, the gateways that served it nothing for `leases.IDLE_SECONDS`."""
    cutoff = now - timedelta(seconds=leases.IDLE_SECONDS)
    idle: dict[str, set[str]] = {}
    for row in rows:
        if row.served_at is None or row.served_at < cutoff:
            idle.setdefault(row.session_id, set()).add(row.gateway_id)
    return idle


def _plan_leases(
    budget: tuple[int, int],
    held: dict[str, leases.Lease],
    carriers: set[str] | None,
    gateway_id: str,
    idle: set[str] | None = None,
) -> dict[str, leases.Lease]:
    limit_bytes, used_bytes = budget
    if (carriers or set()) <= {gateway_id} and held.keys() == {gateway_id}:
        # The common case, a session only this gateway ever carried: skip the general plan.
        own = held[gateway_id]
        granted = leases.sole_carrier_grant(limit_bytes, used_bytes, own.used_bytes)
        return {gateway_id: own if own.granted_bytes == granted else own.regrant(granted)}
    return leases.plan_session_leases(
        limit_bytes=limit_bytes,
        used_total_bytes=used_bytes,
        leases=held,
        carriers=(carriers or set()) | {gateway_id},
        requesting=[gateway_id],
        idle=idle or (),
    )


async def grant_leases(
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
    quotas = await refresh(
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
