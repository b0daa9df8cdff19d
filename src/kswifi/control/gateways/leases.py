"""Lease arithmetic, pure: how many bytes each gateway may serve a session.

A lease is cumulative (see `kswifi.protocol.PeerSpec.quota_bytes`): `granted_bytes` is what the
gateway may serve over the session's whole life on it, `used_bytes` what it reported serving.
Its *outstanding* part, `granted - used`, is budget reserved on that gateway. The rule that
keeps every byte paid for: the outstanding parts of all gateways never add up to more than the
session's remaining budget, `limit - used_total`.

With one gateway carrying the session its lease is the whole remainder (exact cut-off). With
several, each is topped up to a fair share of what is free, and asks again as it nears the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Lease:
    """One gateway's lease of one session."""

    granted_bytes: int
    used_bytes: int

    @property
    def outstanding_bytes(self) -> int:
        """Bytes the gateway may still serve; a gateway that overran holds nothing more."""
        return max(0, self.granted_bytes - self.used_bytes)


def remaining_budget(limit_bytes: int, used_total_bytes: int) -> int:
    return max(0, limit_bytes - used_total_bytes)


def top_up(
    *,
    limit_bytes: int,
    used_total_bytes: int,
    own: Lease,
    others: Iterable[Lease],
    share_bytes: int | None,
) -> int:
    """The gateway's new cumulative grant.

    `others` are the leases of the other gateways still carrying the session. `share_bytes` is
    the outstanding amount to top up to (None: everything that is free, for a sole carrier).
    The result may be lower than the current grant when the budget shrank under it.
    """
    free_for_own = remaining_budget(limit_bytes, used_total_bytes) - sum(
        lease.outstanding_bytes for lease in others
    )
    free_for_own = max(0, free_for_own)
    wanted = free_for_own if share_bytes is None else max(own.outstanding_bytes, share_bytes)
    return own.used_bytes + min(free_for_own, max(0, wanted))


def sole_carrier_grant(limit_bytes: int, used_total_bytes: int, own_used_bytes: int) -> int:
    """The grant of the only gateway that holds a lease of the session: all that remains.

    Equal to `plan_session_leases` with that one lease and carrier (the fast path of polls).
    """
    return own_used_bytes + remaining_budget(limit_bytes, used_total_bytes)


def fair_share(limit_bytes: int, used_total_bytes: int, carriers: int) -> int | None:
    """What each of `carriers` gateways is topped up to; None (all of it) for a sole carrier."""
    if carriers <= 1:
        return None
    remaining = remaining_budget(limit_bytes, used_total_bytes)
    return -(-remaining // carriers)  # ceiling: a small remainder is never stuck unassigned


def plan_session_leases(
    *,
    limit_bytes: int,
    used_total_bytes: int,
    leases: Mapping[str, Lease],
    carriers: Iterable[str],
    requesting: Iterable[str],
) -> dict[str, Lease]:
    """Every lease of one session after gateways in `requesting` asked for a top-up.

    Gateways that no longer carry the session give their outstanding bytes back (their grant
    drops to what they used); then each requesting carrier, in order, takes its share of what
    is free. Gateways neither requesting nor released keep their lease as it is.
    """
    carrier_ids = list(dict.fromkeys(carriers))
    result = {
        gateway_id: (
            lease
            if gateway_id in carrier_ids
            else Lease(min(lease.granted_bytes, lease.used_bytes), lease.used_bytes)
        )
        for gateway_id, lease in leases.items()
    }
    share = fair_share(limit_bytes, used_total_bytes, len(carrier_ids))
    for gateway_id in dict.fromkeys(requesting):
        if gateway_id not in carrier_ids:
            continue
        own = result.get(gateway_id, Lease(0, 0))
        others = [lease for other_id, lease in result.items() if other_id != gateway_id]
        granted = top_up(
            limit_bytes=limit_bytes,
            used_total_bytes=used_total_bytes,
            own=own,
            others=others,
            share_bytes=share,
        )
        result[gateway_id] = Lease(granted, own.used_bytes)
    return result


def total_outstanding(leases: Iterable[Lease]) -> int:
    return sum(lease.outstanding_bytes for lease in leases)
