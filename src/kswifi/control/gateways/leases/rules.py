"""Lease arithmetic, pure: how many bytes each gateway may serve a session.

A lease is cumulative (see `kswifi.protocol.PeerSpec.quota_bytes`): `granted_bytes` is what the
gateway may serve over the session's whole life on it, `used_bytes` what it reported serving.
Its *outstanding* part, `granted - used`, is budget reserved on that gateway. The rule that
keeps every byte paid for: the outstanding parts of all gateways never add up to more than the
session's remaining budget, `limit - used_total`.

With one gateway carrying the session its lease is the whole remainder (exact cut-off). With
several, each is topped up to a fair share of what is free, and asks again as it nears the end.

A lease can also be *lowered*: when a carrier asking for its share finds the bytes reserved by
another carrier (the first gateway of a session holds all of it), that other carrier's grant is
cut to a fair share, and a gateway that stopped carrying the session gives back what it did not
use. A lowered grant frees nothing at once: the gateway enforces the higher grant until it has
applied the lower one, so the old grant is kept as `held_bytes` and still counted as reserved
until the gateway reports it applied (see `Lease.applied`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from kswifi.protocol import PACKET_BYTES as PACKET_BYTES  # the rules below count in it

IDLE_SECONDS = 60
"""A gateway that served a session nothing for this long is idle: when another gateway of the
session runs short, the idle one gives back all of its unused lease (see `reclaim`)."""


@dataclass(frozen=True)
class Lease:
    """One gateway's lease of one session."""

    granted_bytes: int
    used_bytes: int
    held_bytes: int = 0
    """A higher earlier grant the gateway may still be enforcing (0: none): set when the grant
    is lowered, dropped once the gateway applied the lower grant."""

    @property
    def outstanding_bytes(self) -> int:
        """The unused part of the current grant; a gateway that overran holds nothing more."""
        return max(0, self.granted_bytes - self.used_bytes)

    @property
    def reserved_bytes(self) -> int:
        """Bytes the gateway may still serve: the unused part of the highest grant it may be
        enforcing. What other gateways can never be granted."""
        return max(0, max(self.granted_bytes, self.held_bytes) - self.used_bytes)

    def regrant(self, granted_bytes: int) -> Lease:
        """This lease with a new grant. Lowering keeps the highest grant the gateway may still
        enforce as `held_bytes`; a grant at or above it needs no hold."""
        enforced = max(self.granted_bytes, self.held_bytes)
        return Lease(granted_bytes, self.used_bytes, enforced if enforced > granted_bytes else 0)

    def applied(self) -> Lease:
        """This lease once the gateway applied its current grant: nothing held any more."""
        return Lease(self.granted_bytes, self.used_bytes)


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
        lease.reserved_bytes for lease in others
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
    idle: Collection[str] = (),
) -> dict[str, Lease]:
    """Every lease of one session after gateways in `requesting` asked for a top-up.

    Gateways that no longer carry the session give their outstanding bytes back (their grant
    drops to what they used); then each requesting carrier, in order, takes its share of what
    is free. The share is counted among the active carriers: `idle` ones (their device served
    nothing for a while) do not count, and an idle one asking gets nothing more (a gateway
    whose phone wakes up asks as an active one: the caller leaves it out of `idle`).

    A requesting carrier that cannot get even half of that because other carriers hold more
    has their leases lowered (`reclaim`): an idle carrier's to what it used, an active one's
    to a fair share. The bytes are free for the requester once those gateways applied the
    lower grants and it asks again. Gateways neither requesting, released nor reclaimed from
    keep their lease as it is.
    """
    carrier_ids = list(dict.fromkeys(carriers))
    result = {
        gateway_id: (
            lease
            if gateway_id in carrier_ids
            else lease.regrant(min(lease.granted_bytes, lease.used_bytes))
        )
        for gateway_id, lease in leases.items()
    }
    asking = [gateway_id for gateway_id in dict.fromkeys(requesting) if gateway_id in carrier_ids]
    resting = set(idle)
    active = [gateway_id for gateway_id in carrier_ids if gateway_id not in resting]
    share = fair_share(limit_bytes, used_total_bytes, len(active))
    for gateway_id in asking:
        if gateway_id in resting:
            continue
        own = result.get(gateway_id, Lease(0, 0))
        others = {other_id: lease for other_id, lease in result.items() if other_id != gateway_id}
        granted = top_up(
            limit_bytes=limit_bytes,
            used_total_bytes=used_total_bytes,
            own=own,
            others=others.values(),
            share_bytes=share,
        )
        due = remaining_budget(limit_bytes, used_total_bytes) if share is None else share
        if granted - own.used_bytes < due // 2:
            result.update(reclaim(others, active, share or 0, idle=resting))
        result[gateway_id] = own.regrant(granted)
    return result


def reclaim(
    leases: Mapping[str, Lease],
    carriers: Iterable[str],
    share_bytes: int,
    *,
    idle: Collection[str] = (),
) -> dict[str, Lease]:
    """Leases lowered for a carrier short of its share: each `idle` gateway's to what it used,
    each of the `carriers`' whose unused grant is above `share_bytes` to that share."""
    carrier_ids, resting = set(carriers), set(idle)
    lowered: dict[str, Lease] = {}
    for gateway_id, lease in leases.items():
        if gateway_id in resting and lease.outstanding_bytes > 0:
            lowered[gateway_id] = lease.regrant(lease.used_bytes)
        elif gateway_id in carrier_ids and lease.outstanding_bytes > share_bytes:
            lowered[gateway_id] = lease.regrant(lease.used_bytes + share_bytes)
    return lowered


def total_reserved(leases: Iterable[Lease]) -> int:
    """Bytes all these gateways may still serve together (held grants included)."""
    return sum(lease.reserved_bytes for lease in leases)
