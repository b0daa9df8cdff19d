"""Pure reconciliation: `diff(desired, actual) -> actions`, plus a model of applying them.

Nothing here touches the kernel. `desired_from_state` turns a DesiredState into the `Desired`
view at a given time (expired sessions dropped), `diff` lists the actions that take the actual
data plane there, and `apply_actions` computes the state those actions lead to (used by the
tests and by the fake data plane).

A single change to a gateway holding 10,000 sessions must not cost a pass over all of them:
`DesiredTracker` keeps the `Desired` view of the last DesiredState and updates it peer by peer,
returning the `Scope` the change touched, and `diff(desired, actual, scope)` looks only at
that scope. Both give exactly what the full conversion and the full diff give (tested).
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal, TypeVar

from kswifi.agent.model import (
    ActualState,
    Desired,
    DesiredPeer,
    DesiredSession,
    InterfaceState,
    PeerState,
    SessionObjects,
)
from kswifi.protocol import DesiredState, PeerSpec

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
    rate; if they disagree, the larger value wins (and the later expiry, no expiry latest).
    """
    overrides = lease_overrides or {}
    interface = _interface_of(state, default_interface)
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
            expires_at = _later(expires_at, previous.expires_at)
        sessions[session_id] = DesiredSession(quota, speed, expires_at)
    return Desired(
        interface=interface,
        peers=peers,
        sessions=sessions,
        addresses=addresses,
        expired_peers=frozenset(expired - peers.keys()),
    )


def _interface_of(
    state: DesiredState, default_interface: InterfaceState | None
) -> InterfaceState | None:
    if state.interface is None:
        return default_interface
    return InterfaceState(
        private_key=state.interface.private_key,
        listen_port=state.interface.listen_port,
        addresses=frozenset(str(ipaddress.ip_interface(a)) for a in state.interface.addresses),
    )


@dataclass
class DesiredTracker:
    """The `Desired` view of the last DesiredState, kept up to date change by change.

    `rebuild` converts a whole DesiredState (`desired_from_state`); `update` compares a newer
    one with the last peer by peer (a dictionary lookup and a field comparison each), redoes
    only the peers, sessions and addresses that changed, expired or had their lease override
    changed, and returns that `Scope`. Its `desired` equals what `desired_from_state` gives
    for the same arguments as long as the clock does not go back (a peer once expired stays
    cut until the next `rebuild`, the periodic resync). A state where two peers claim one
    address or one key (the protocol refuses it; the conversion then depends on the peers'
    order) is always rebuilt.
    """

    default_interface: InterfaceState | None = None
    desired: Desired = field(default_factory=lambda: Desired(interface=None))
    state: DesiredState | None = None
    specs: dict[str, PeerSpec] = field(default_factory=dict)
    """public key -> the spec the view was made from (live and expired peers)."""
    peers: dict[str, DesiredPeer] = field(default_factory=dict)
    sessions: dict[str, DesiredSession] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    expired: set[str] = field(default_factory=set)
    session_peers: dict[str, set[str]] = field(default_factory=dict)
    """session -> public keys of its live peers."""
    owners: dict[str, str] = field(default_factory=dict)
    """address -> public key of the live peer that claims it."""
    expiries: list[tuple[datetime, str]] = field(default_factory=list)
    """Heap of (expires_at, public key) of live peers (stale entries are skipped)."""
    overrides: dict[str, int] = field(default_factory=dict)
    ambiguous: bool = False

    def rebuild(
        self,
        state: DesiredState,
        now: datetime,
        lease_overrides: Mapping[str, int] | None = None,
    ) -> Desired:
        """Convert `state` in full (start, resync, or a state `update` cannot follow)."""
        overrides = dict(lease_overrides or {})
        desired = desired_from_state(
            state, now, default_interface=self.default_interface, lease_overrides=overrides
        )
        self.state, self.overrides = state, overrides
        self.specs = {spec.public_key: spec for spec in state.peers}
        self.peers = dict(desired.peers)
        self.sessions = dict(desired.sessions)
        self.addresses = dict(desired.addresses)
        self.expired = set(desired.expired_peers)
        self.session_peers = {}
        self.owners = {}
        self.expiries = []
        claimed = 0
        for key, peer in self.peers.items():
            self.session_peers.setdefault(peer.session_id, set()).add(key)
            for address in peer.allowed_ips:
                self.owners[address] = key
            claimed += len(peer.allowed_ips)
            expires_at = self.specs[key].expires_at
            if expires_at is not None:
                self.expiries.append((expires_at, key))
        heapq.heapify(self.expiries)
        # Shared keys or addresses: the conversion kept the first claim; rebuild every time.
        self.ambiguous = len(self.specs) != len(state.peers) or claimed != len(self.owners)
        if not self.ambiguous:
            live_claims = sum(
                len(_normalized_set(tuple(self.specs[key].allowed_ips))) for key in self.peers
            )
            self.ambiguous = live_claims != claimed
        self._publish(desired.interface)
        return self.desired

    def update(
        self,
        state: DesiredState,
        now: datetime,
        lease_overrides: Mapping[str, int] | None = None,
    ) -> Scope | None:
        """Follow `state` from the last one; the touched scope, or None if it was rebuilt in
        full (then diff everything)."""
        if self.state is None or self.ambiguous:
            self.rebuild(state, now, lease_overrides)
            return None
        touched_peers: set[str] = set()
        touched_sessions: set[str] = set()
        touched_addresses: set[str] = set()
        if state is not self.state:
            specs = {spec.public_key: spec for spec in state.peers}
            if len(specs) != len(state.peers):
                self.rebuild(state, now, lease_overrides)
                return None
            old_specs = self.specs
            # PeerSpec has neither private nor extra attributes: its fields are its __dict__
            # (a third of pydantic's __eq__ cost, which counts at 10,000 peers).
            changed = [
                key
                for key, spec in specs.items()
                if (old := old_specs.get(key)) is not spec
                and (old is None or vars(old) != vars(spec))
            ]
            changed += [key for key in old_specs.keys() - specs.keys()]
            for key in changed:
                self._forget(key, touched_sessions, touched_addresses)
            self.specs = specs
            for key in changed:
                touched_peers.add(key)
                spec = specs.get(key)
                if spec is None:
                    continue
                if not self._take(spec, now, touched_sessions):
                    self.rebuild(state, now, lease_overrides)
                    return None
                touched_addresses.update(_normalized_set(tuple(spec.allowed_ips)))
            self.state = state
        while self.expiries and self.expiries[0][0] <= now:
            expires_at, key = heapq.heappop(self.expiries)
            spec = self.specs.get(key)
            if key in self.peers and spec is not None and spec.expires_at == expires_at:
                self._forget(key, touched_sessions, touched_addresses)
                self.expired.add(key)
                touched_peers.add(key)
        overrides = dict(lease_overrides or {})
        if overrides != self.overrides:
            touched_sessions.update(
                session
                for session in overrides.keys() | self.overrides.keys()
                if overrides.get(session) != self.overrides.get(session)
            )
            self.overrides = overrides
        for session_id in touched_sessions:
            self._recompute_session(session_id)
        self._publish(_interface_of(state, self.default_interface))
        return Scope(
            frozenset(touched_peers), frozenset(touched_sessions), frozenset(touched_addresses)
        )

    def _forget(self, key: str, sessions: set[str], addresses: set[str]) -> None:
        """Take a peer's contribution out of the view (before it changes or goes)."""
        self.expired.discard(key)
        peer = self.peers.pop(key, None)
        if peer is None:
            return
        sessions.add(peer.session_id)
        addresses.update(peer.allowed_ips)
        members = self.session_peers.get(peer.session_id)
        if members is not None:
            members.discard(key)
            if not members:
                del self.session_peers[peer.session_id]
        for address in peer.allowed_ips:
            if self.owners.get(address) == key:
                del self.owners[address]
                del self.addresses[address]

    def _take(self, spec: PeerSpec, now: datetime, sessions: set[str]) -> bool:
        """Add a peer's contribution; False if one of its addresses is another peer's."""
        key, session_id = spec.public_key, spec.session_id
        if spec.expires_at is not None and spec.expires_at <= now:
            self.expired.add(key)
            return True
        allowed = _normalized_set(tuple(spec.allowed_ips))
        if any(address in self.owners for address in allowed):
            return False
        self.peers[key] = DesiredPeer(key, spec.preshared_key, allowed, session_id)
        for address in allowed:
            self.owners[address] = key
            self.addresses[address] = session_id
        self.session_peers.setdefault(session_id, set()).add(key)
        if spec.expires_at is not None:
            heapq.heappush(self.expiries, (spec.expires_at, key))
        sessions.add(session_id)
        return True

    def _recompute_session(self, session_id: str) -> None:
        members = self.session_peers.get(session_id)
        if not members:
            self.sessions.pop(session_id, None)
            return
        specs = [self.specs[key] for key in members]
        quota = max(spec.quota_bytes for spec in specs)
        quota = max(quota, self.overrides.get(session_id, 0))
        speed = max(spec.speed_mbps for spec in specs)
        expires_at = specs[0].expires_at
        for spec in specs[1:]:
            expires_at = _later(expires_at, spec.expires_at)
        self.sessions[session_id] = DesiredSession(quota, speed, expires_at)

    def _publish(self, interface: InterfaceState | None) -> None:
        # The view shares the tracker's dictionaries: no copy of 10,000 entries per change.
        self.desired = Desired(
            interface=interface,
            peers=self.peers,
            sessions=self.sessions,
            addresses=self.addresses,
            expired_peers=frozenset(self.expired),
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


def _later(first: datetime | None, second: datetime | None) -> datetime | None:
    """The later of two expiries, where None (no expiry) is the latest."""
    if first is None or second is None:
        return None
    return max(first, second)


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
    quotas: list[Action] = []
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
    actions += sorted(quotas, key=lambda a: a.session_id)  # type: ignore[union-attr]
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
