"""The actions a reconcile takes (what the drivers carry out) and what they do to the model.

`apply_actions` computes the state a list of actions leads to, without touching a kernel: the
data plane predicts its state with it after an apply, the tests and the fake data plane use it
as the model the drivers are checked against.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, TypeVar

from kswifi.agent.model import (
    ActualState,
    InterfaceState,
    PeerState,
    SessionObjects,
)

RemovalReason = Literal["removed", "expired", "unknown", "moved"]
_V = TypeVar("_V")


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
    session_id: str | None  # None: the walled garden

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


def _owned(mapping: Mapping[str, _V], in_place: bool) -> dict[str, _V]:
    if in_place and isinstance(mapping, dict):
        return mapping
    return dict(mapping)


def apply_actions(
    actual: ActualState,
    actions: Iterable[Action],
    *,
    owners: dict[str, str] | None = None,
    in_place: bool = False,
) -> ActualState:
    """The state a faithful data plane reaches after `actions` (a model of the drivers).

    `owners` (allowed IP -> peer key of `actual`) may be passed in to save building it; it is
    updated in place. With `in_place`, the dictionaries of `actual` are updated instead of
    copied (`actual` is then the state after too): a change costs what it touches, not a copy
    of 10,000 peers."""
    interface = actual.interface
    peers = _owned(actual.peers, in_place)
    sessions = _owned(actual.sessions, in_place)
    addresses = _owned(actual.addresses, in_place)
    rates = _owned(actual.rates, in_place)
    shaped = _owned(actual.shaped, in_place)
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
