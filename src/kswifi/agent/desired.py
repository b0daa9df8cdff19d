"""The desired view of the data plane: what a DesiredState asks for at a given time.

`desired_from_state` turns a DesiredState into the `Desired` view (expired sessions dropped).
A single change to a gateway holding 10,000 sessions must not cost a pass over all of them:
`DesiredTracker` keeps the view of the last DesiredState and updates it peer by peer,
returning the `Scope` the change touched (see `reconcile.diff`). Both give exactly what the
full conversion gives (tested).
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from kswifi.agent.hosts import canonical_host
from kswifi.agent.model import (
    Desired,
    DesiredPeer,
    DesiredSession,
    InterfaceState,
)
from kswifi.agent.reconcile import Scope
from kswifi.protocol import DesiredState, PeerSpec
from kswifi.protocol.deltas import changed_peers


@functools.lru_cache(maxsize=1 << 17)
def normalize_address(value: str) -> str:
    """Canonical host address text (`100.64.0.2/32` and `100.64.0.2` both give `100.64.0.2`)."""
    return canonical_host(value)


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
        if session_id is None:  # the walled garden: a peer, no session objects
            peers[key] = DesiredPeer(key, spec.preshared_key, allowed, None)
            continue
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
            if peer.session_id is not None:
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
        changes: Mapping[str, PeerSpec | None] | None = None,
    ) -> Scope | None:
        """Follow `state` from the last one; the touched scope, or None if it was rebuilt in
        full (then diff everything). `changes` are the peers that differ between the two (a
        delta's, None: removed), when known: then the others are not even looked at."""
        if self.state is None or self.ambiguous:
            self.rebuild(state, now, lease_overrides)
            return None
        touched_peers: set[str] = set()
        touched_sessions: set[str] = set()
        touched_addresses: set[str] = set()
        if state is not self.state:
            if changes is not None:
                changed = list(changes)
                for key, spec in changes.items():
                    if spec is None:
                        self.specs.pop(key, None)
                    else:
                        self.specs[key] = spec
            else:
                specs = {spec.public_key: spec for spec in state.peers}
                if len(specs) != len(state.peers):
                    self.rebuild(state, now, lease_overrides)
                    return None
                old_specs = self.specs
                changed = [spec.public_key for spec in changed_peers(old_specs, specs.values())]
                changed += [key for key in old_specs.keys() - specs.keys()]
                self.specs = specs
            for key in changed:
                self._forget(key, touched_sessions, touched_addresses)
            for key in changed:
                touched_peers.add(key)
                spec = self.specs.get(key)
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
        addresses.update(peer.allowed_ips)
        if peer.session_id is not None:
            sessions.add(peer.session_id)
            members = self.session_peers.get(peer.session_id)
            if members is not None:
                members.discard(key)
                if not members:
                    del self.session_peers[peer.session_id]
        for address in peer.allowed_ips:
            if self.owners.get(address) == key:
                del self.owners[address]
                self.addresses.pop(address, None)

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
        if session_id is None:
            return True  # the walled garden: its addresses map to no session
        for address in allowed:
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


def _later(first: datetime | None, second: datetime | None) -> datetime | None:
    """The later of two expiries, where None (no expiry) is the latest."""
    if first is None or second is None:
        return None
    return max(first, second)
