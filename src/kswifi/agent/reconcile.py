"""Pure reconciliation: `diff(desired, actual, scope) -> actions`.

Nothing here touches the kernel. `diff` lists the actions (`actions`) that take the actual
data plane to the desired view (`desired`); given the `Scope` a change touched, it looks only
there, and gives exactly what the full diff gives (tested).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from kswifi.agent.actions import (
    Action,
    AddPeer,
    ConfigureInterface,
    CreateSession,
    DeleteRate,
    DeleteSession,
    MapAddress,
    RemovalReason,
    RemovePeer,
    SetQuota,
    SetRate,
    ShapeAddress,
    UnmapAddress,
    UnshapeAddress,
    UpdatePeer,
)
from kswifi.agent.model import (
    ActualState,
    Desired,
)


def _interface_actions(desired: Desired, actual: ActualState) -> list[Action]:
    want = desired.interface
    if want is None:
        return []
    have = actual.interface
    if have == want:
        return []
    return [ConfigureInterface(want.private_key, want.listen_port, want.addresses)]


def _removal_reason(desired: Desired, public_key: str) -> RemovalReason:
    return "expired" if public_key in desired.expired_peers else "removed"


@dataclass(frozen=True)
class Scope:
    """The peers, sessions and addresses a change may have touched (what a scoped diff reads).

    Every action concerns one item: a peer key (AddPeer, UpdatePeer, RemovePeer), a session
    (CreateSession, SetQuota, DeleteSession, SetRate, DeleteRate) or an address (MapAddress,
    UnmapAddress, ShapeAddress, UnshapeAddress).
    """

    peers: frozenset[str] = frozenset()
    sessions: frozenset[str] = frozenset()
    addresses: frozenset[str] = frozenset()

    def __or__(self, other: Scope) -> Scope:
        return Scope(
            self.peers | other.peers,
            self.sessions | other.sessions,
            self.addresses | other.addresses,
        )

    def __bool__(self) -> bool:
        return bool(self.peers or self.sessions or self.addresses)


def followup_scope(actions: Iterable[Action], actual: ActualState) -> Scope:
    """What the pass after `actions` (computed against `actual`) must look at again: a session
    whose addresses were unmapped (or mapped to another session) has its objects deleted only
    once a read saw no address pointing at it."""
    addresses = frozenset(a.address for a in actions if isinstance(a, UnmapAddress | MapAddress))
    sessions = frozenset(
        session for address in addresses if (session := actual.addresses.get(address)) is not None
    )
    return Scope(sessions=sessions, addresses=addresses) if sessions else Scope()


def _only(keys: Collection[str], within: Collection[str] | None) -> Iterable[str]:
    """`keys`, or those of them in `within` (a scope) when a scope is given."""
    if within is None:
        return keys
    return [key for key in within if key in keys]


def diff(desired: Desired, actual: ActualState, scope: Scope | None = None) -> list[Action]:
    """Actions that take `actual` to `desired`, in the order they must be applied.

    Order: interface; stop serving removed addresses (nft unmap) before removing their peers;
    create quotas and map addresses before adding the peers that use them; tc classes before
    the filters that point at them and filters removed before their classes; session objects
    are deleted only once no address referenced them when `actual` was read.

    With a `scope`, only its peers, sessions and addresses are compared (the interface always
    is): the result is the full diff's whenever every action of the full diff concerns an item
    of the scope, i.e. `actual` matches `desired` outside it (the state the last apply left,
    plus a desired-state change whose scope `DesiredTracker.update` returned).
    """
    peers = None if scope is None else scope.peers
    sessions = None if scope is None else scope.sessions
    addresses = None if scope is None else scope.addresses
    actions: list[Action] = _interface_actions(desired, actual)
    expired_keys = _only(desired.expired_peers, peers)
    expired_addresses = {
        address
        for key in expired_keys
        if (expired_peer := actual.peers.get(key)) is not None
        for address in expired_peer.allowed_ips
    }

    # Each pass scans unsorted (10,000 sessions: sorting them all on every reconcile would
    # cost more than the scan) and sorts only what it found, so the order stays stable.
    wanted_addresses = desired.addresses
    for address in sorted(
        a for a in _only(actual.addresses, addresses) if a not in wanted_addresses
    ):
        reason: RemovalReason = "expired" if address in expired_addresses else "removed"
        actions.append(UnmapAddress(address, reason))
    wanted_peers = desired.peers
    for key in sorted(k for k in _only(actual.peers, peers) if k not in wanted_peers):
        actions.append(RemovePeer(key, _removal_reason(desired, key)))

    objects_of = actual.sessions.get
    quotas: list[CreateSession | SetQuota] = []
    wanted_sessions = desired.sessions
    for session_id in _only(wanted_sessions, sessions):
        session = wanted_sessions[session_id]
        objects = objects_of(session_id)
        if objects is None:
            served = actual.served.get(session_id, 0)
            quotas.append(CreateSession(session_id, session.quota_bytes, served))
        elif objects.quota_bytes != session.quota_bytes:
            served = actual.served.get(session_id, 0)
            raised = session.quota_bytes > objects.quota_bytes
            reset = served if objects.exhausted and raised else None
            quotas.append(SetQuota(session_id, session.quota_bytes, reset))
    quotas.sort(key=lambda a: a.session_id)
    actions += quotas
    mapped = actual.addresses.get
    actions += [
        MapAddress(address, session_id)
        for address, session_id in sorted(
            (a, wanted_addresses[a])
            for a in _only(wanted_addresses, addresses)
            if mapped(a) != wanted_addresses[a]
        )
    ]

    peer_of = actual.peers.get
    changed_peers: list[Action] = []
    for key in _only(wanted_peers, peers):
        peer = wanted_peers[key]
        have = peer_of(key)
        if have is None:
            changed_peers.append(
                AddPeer(key, peer.preshared_key, peer.allowed_ips, peer.session_id)
            )
        elif have.preshared_key != peer.preshared_key or have.allowed_ips != peer.allowed_ips:
            changed_peers.append(UpdatePeer(key, peer.preshared_key, peer.allowed_ips))
    actions += sorted(changed_peers, key=lambda a: a.public_key)  # type: ignore[union-attr]

    rate_of = actual.rates.get
    actions += [
        SetRate(session_id, speed)
        for session_id, speed in sorted(
            (s, wanted_sessions[s].speed_mbps)
            for s in _only(wanted_sessions, sessions)
            if rate_of(s) != wanted_sessions[s].speed_mbps
        )
    ]
    for address in sorted(a for a in _only(actual.shaped, addresses) if a not in wanted_addresses):
        actions.append(UnshapeAddress(address))
    shaped_as = actual.shaped.get
    actions += [
        ShapeAddress(address, session_id)
        for address, session_id in sorted(
            (a, wanted_addresses[a])
            for a in _only(wanted_addresses, addresses)
            if shaped_as(a) != wanted_addresses[a]
        )
    ]
    for session_id in sorted(s for s in _only(actual.rates, sessions) if s not in wanted_sessions):
        actions.append(DeleteRate(session_id))

    # Outside a scope, `actual` maps an address as `desired` does, so only a scope's addresses
    # can still point at a session the desired state dropped.
    if addresses is None:
        referenced = set(actual.addresses.values())
    else:
        referenced = {s for a in addresses if (s := actual.addresses.get(a)) is not None}
    for session_id in sorted(
        s
        for s in _only(actual.sessions, sessions)
        if s not in wanted_sessions and s not in referenced
    ):
        actions.append(DeleteSession(session_id))
    return actions
