"""Pure reconciliation: `diff(desired, actual) -> actions`, plus a model of applying them.

Nothing here touches the kernel. `desired_from_state` turns a DesiredState into the `Desired`
view at a given time (expired sessions dropped), `diff` lists the actions that take the actual
data plane there, and `apply_actions` computes the state those actions lead to (used by the
tests and by the fake data plane).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from kswifi.agent.model import (
    ActualState,
    Desired,
    DesiredPeer,
    DesiredSession,
    InterfaceState,
    PeerState,
    SessionObjects,
)
from kswifi.protocol import DesiredState

RemovalReason = Literal["removed", "expired", "unknown", "moved"]


@dataclass(frozen=True)
class ConfigureInterface:
    """Set the interface key, port and addresses (only the fields that differ are touched)."""

    private_key: str | None
    listen_port: int | None
    addresses: frozenset[str]

    def __repr__(self) -> str:
        return f"ConfigureInterface(port={self.listen_port}, addresses={sorted(self.addresses)})"


@dataclass(frozen=True)
class AddPeer:
    public_key: str
    preshared_key: str
    allowed_ips: frozenset[str]
    session_id: str

    def __repr__(self) -> str:
        return f"AddPeer({self.public_key[:8]}…, {sorted(self.allowed_ips)}, {self.session_id})"


@dataclass(frozen=True)
class UpdatePeer:
    """Same public key, new preshared key and/or allowed IPs."""

    public_key: str
    preshared_key: str
    allowed_ips: frozenset[str]

    def __repr__(self) -> str:
        return f"UpdatePeer({self.public_key[:8]}…, {sorted(self.allowed_ips)})"


@dataclass(frozen=True)
class RemovePeer:
    public_key: str
    reason: RemovalReason


@dataclass(frozen=True)
class CreateSession:
    """Create a session's quota object (starting at `used_bytes` already served) and counters."""

    session_id: str
    quota_bytes: int
    used_bytes: int


@dataclass(frozen=True)
class SetQuota:
    """Change a quota's limit in place (keeps `used`), or replace it with `reset_used_to`.

    Replacing is needed only after exhaustion: the kernel also counts the bytes of the
    packets it dropped, which must not be charged once a new lease lets traffic flow again.
    """

    session_id: str
    quota_bytes: int
    reset_used_to: int | None = None


@dataclass(frozen=True)
class DeleteSession:
    """Delete a session's quota and counters (its addresses were unmapped before the last read,
    so that read already harvested the final counter values)."""

    session_id: str


@dataclass(frozen=True)
class MapAddress:
    address: str
    session_id: str


@dataclass(frozen=True)
class UnmapAddress:
    address: str
    reason: RemovalReason


@dataclass(frozen=True)
class SetRate:
    """Create the session's HTB classes or change their rate in place."""

    session_id: str
    speed_mbps: int


@dataclass(frozen=True)
class DeleteRate:
    session_id: str


@dataclass(frozen=True)
class ShapeAddress:
    address: str
    session_id: str


@dataclass(frozen=True)
class UnshapeAddress:
    address: str


Action = (
    ConfigureInterface
    | AddPeer
    | UpdatePeer
    | RemovePeer
    | CreateSession
    | SetQuota
    | DeleteSession
    | MapAddress
    | UnmapAddress
    | SetRate
    | DeleteRate
    | ShapeAddress
    | UnshapeAddress
)


@functools.lru_cache(maxsize=1 << 17)
def normalize_address(value: str) -> str:
    """Canonical host address text (`100.64.0.2/32` and `100.64.0.2` both give `100.64.0.2`)."""
    return str(ipaddress.ip_interface(value).ip)


@functools.lru_cache(maxsize=1 << 16)
def _normalized_set(allowed_ips: tuple[str, ...]) -> frozenset[str]:
    return frozenset(normalize_address(a) for a in allowed_ips)


def desired_from_state(
    state: DesiredState,
    now: datetime,
    *,
    default_interface: InterfaceState | None = None,
    lease_overrides: Mapping[str, int] | None = None,
) -> Desired:
    """The data plane a DesiredState asks for at `now`: peers of expired sessions are left out.

    `lease_overrides` are lease grants received after `state` was produced (a larger lease
    wins until a newer desired state includes it). Devices of one session share its quota and
    rate; if they disagree, the larger value wins.
    """
    overrides = lease_overrides or {}
    interface = default_interface
    if state.interface is not None:
        interface = InterfaceState(
            private_key=state.interface.private_key,
            listen_port=state.interface.listen_port,
            addresses=frozenset(str(ipaddress.ip_interface(a)) for a in state.interface.addresses),
        )
    peers: dict[str, DesiredPeer] = {}
    sessions: dict[str, DesiredSession] = {}
    addresses: dict[str, str] = {}
    expired: set[str] = set()
    # A hot loop (10,000 peers on every reconcile): local names, no work for the usual case.
    taken = addresses.get
    for spec in state.peers:
        expires_at = spec.expires_at
        if expires_at is not None and expires_at <= now:
            expired.add(spec.public_key)
            continue
        key, session_id = spec.public_key, spec.session_id
        if key in peers:
            continue  # a duplicate key is a control-plane bug; the first one wins
        allowed = _normalized_set(tuple(spec.allowed_ips))
        free = allowed
        for address in allowed:
            if taken(address, session_id) != session_id:
                free = frozenset(a for a in allowed if taken(a, session_id) == session_id)
                break
        peers[key] = DesiredPeer(key, spec.preshared_key, free, session_id)
        for address in free:
            addresses[address] = session_id
        quota = spec.quota_bytes
        if overrides:
            quota = max(quota, overrides.get(session_id, 0))
        previous = sessions.get(session_id)
        speed = spec.speed_mbps
        if previous is not None:
            quota = max(quota, previous.quota_bytes)
            speed = max(speed, previous.speed_mbps)
        sessions[session_id] = DesiredSession(quota, speed, expires_at)
    return Desired(
        interface=interface,
        peers=peers,
        sessions=sessions,
        addresses=addresses,
        expired_peers=frozenset(expired - peers.keys()),
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


def diff(desired: Desired, actual: ActualState) -> list[Action]:
    """Actions that take `actual` to `desired`, in the order they must be applied.

    Order: interface; stop serving removed addresses (nft unmap) before removing their peers;
    create quotas and map addresses before adding the peers that use them; tc classes before
    the filters that point at them and filters removed before their classes; session objects
    are deleted only once no address referenced them when `actual` was read.
    """
    actions: list[Action] = _interface_actions(desired, actual)
    expired_addresses = {
        address
        for key in desired.expired_peers
        if (expired_peer := actual.peers.get(key)) is not None
        for address in expired_peer.allowed_ips
    }

    # Each pass scans unsorted (10,000 sessions: sorting them all on every reconcile would
    # cost more than the scan) and sorts only what it found, so the order stays stable.
    for address in sorted(actual.addresses.keys() - desired.addresses.keys()):
        reason: RemovalReason = "expired" if address in expired_addresses else "removed"
        actions.append(UnmapAddress(address, reason))
    for key in sorted(actual.peers.keys() - desired.peers.keys()):
        actions.append(RemovePeer(key, _removal_reason(desired, key)))

    objects_of = actual.sessions.get
    quotas: list[Action] = []
    for session_id, session in desired.sessions.items():
        objects = objects_of(session_id)
        if objects is None:
            served = actual.served.get(session_id, 0)
            quotas.append(CreateSession(session_id, session.quota_bytes, served))
        elif objects.quota_bytes != session.quota_bytes:
            served = actual.served.get(session_id, 0)
            raised = session.quota_bytes > objects.quota_bytes
            reset = served if objects.exhausted and raised else None
            quotas.append(SetQuota(session_id, session.quota_bytes, reset))
    actions += sorted(quotas, key=lambda a: a.session_id)  # type: ignore[union-attr]
    mapped = actual.addresses.get
    actions += [
        MapAddress(address, session_id)
        for address, session_id in sorted(
            (a, s) for a, s in desired.addresses.items() if mapped(a) != s
        )
    ]

    peer_of = actual.peers.get
    changed_peers: list[Action] = []
    for key, peer in desired.peers.items():
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
            (s, d.speed_mbps) for s, d in desired.sessions.items() if rate_of(s) != d.speed_mbps
        )
    ]
    for address in sorted(actual.shaped.keys() - desired.addresses.keys()):
        actions.append(UnshapeAddress(address))
    shaped_as = actual.shaped.get
    actions += [
        ShapeAddress(address, session_id)
        for address, session_id in sorted(
            (a, s) for a, s in desired.addresses.items() if shaped_as(a) != s
        )
    ]
    for session_id in sorted(actual.rates.keys() - desired.sessions.keys()):
        actions.append(DeleteRate(session_id))

    referenced = set(actual.addresses.values())
    for session_id in sorted(actual.sessions.keys() - desired.sessions.keys() - referenced):
        actions.append(DeleteSession(session_id))
    return actions


def apply_actions(
    actual: ActualState, actions: Iterable[Action], *, owners: dict[str, str] | None = None
) -> ActualState:
    """The state a faithful data plane reaches after `actions` (a model of the drivers).

    `owners` (allowed IP -> peer key of `actual`) may be passed in to save building it; it is
    updated in place."""
    interface = actual.interface
    peers = dict(actual.peers)
    sessions = dict(actual.sessions)
    addresses = dict(actual.addresses)
    rates = dict(actual.rates)
    shaped = dict(actual.shaped)
    if owners is None:
        owners = {ip: key for key, peer in peers.items() for ip in peer.allowed_ips}
    for action in actions:
        match action:
            case ConfigureInterface(private_key, listen_port, wanted):
                interface = InterfaceState(private_key, listen_port, wanted)
            case AddPeer(key, psk, allowed, _) | UpdatePeer(key, psk, allowed):
                had = peers.get(key)
                if had is not None:
                    for ip in had.allowed_ips - allowed:
                        owners.pop(ip, None)
                _steal_allowed_ips(peers, owners, key, allowed)
                peers[key] = PeerState(key, psk, allowed)
            case RemovePeer(key, _):
                removed = peers.pop(key, None)
                for ip in removed.allowed_ips if removed else ():
                    if owners.get(ip) == key:
                        del owners[ip]
            case CreateSession(session_id, quota, used):
                sessions[session_id] = SessionObjects(quota, used)
            case SetQuota(session_id, quota, reset):
                old = sessions[session_id]
                used = old.used_bytes if reset is None else reset
                sessions[session_id] = replace(old, quota_bytes=quota, used_bytes=used)
            case DeleteSession(session_id):
                sessions.pop(session_id, None)
            case MapAddress(address, session_id):
                addresses[address] = session_id
            case UnmapAddress(address, _):
                addresses.pop(address, None)
            case SetRate(session_id, speed):
                rates[session_id] = speed
            case DeleteRate(session_id):
                rates.pop(session_id, None)
            case ShapeAddress(address, session_id):
                shaped[address] = session_id
            case UnshapeAddress(address):
                shaped.pop(address, None)
    return ActualState(
        interface=interface,
        peers=peers,
        sessions=sessions,
        addresses=addresses,
        rates=rates,
        shaped=shaped,
        served=actual.served,
    )


def _steal_allowed_ips(
    peers: dict[str, PeerState], owners: dict[str, str], key: str, allowed: frozenset[str]
) -> None:
    """WireGuard moves an allowed IP to the peer that last claimed it (`owners`: ip -> key,
    kept up to date, so a batch of 10,000 adds stays linear)."""
    for ip in allowed:
        previous = owners.get(ip)
        if previous is not None and previous != key and previous in peers:
            peer = peers[previous]
            peers[previous] = replace(peer, allowed_ips=peer.allowed_ips - {ip})
        owners[ip] = key


def summarize(actions: Sequence[Action]) -> dict[str, int]:
    """Counts of actions per type, for one log line per reconcile."""
    counts: dict[str, int] = {}
    for action in actions:
        name = type(action).__name__
        counts[name] = counts.get(name, 0) + 1
    return counts
