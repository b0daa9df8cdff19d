"""Desired-state deltas, both ends: `make_delta` (what changed between two states, the
control plane's side) and `PeerBook` (the agent's last good state, which checks a delta
against what it holds and applies it without going over the peers that did not change).

Applying `make_delta(a, b)` to a book of `a` gives `b`'s peers, interface and garden
(tested as a property over any sequence of states)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kswifi.protocol.models import MAX_PEERS, DesiredDelta, DesiredState, PeerSpec


def peers_by_key(state: DesiredState) -> dict[str, PeerSpec]:
    return {peer.public_key: peer for peer in state.peers}


def changed_peers(base: Mapping[str, PeerSpec], peers: Iterable[PeerSpec]) -> list[PeerSpec]:
    """The peers that `base` lacks or holds with other values (the same object is skipped
    at once: most peers of a new state are the ones of the last)."""
    return [
        peer
        for peer in peers
        # PeerSpec has neither private nor extra attributes: its fields are its __dict__
        # (a third of pydantic's __eq__ cost, which counts at 10,000 peers).
        if (old := base.get(peer.public_key)) is not peer
        and (old is None or vars(old) != vars(peer))
    ]


def make_delta(
    base: Mapping[str, PeerSpec], base_revision: int, state: DesiredState
) -> DesiredDelta:
    """What turns the peers `base` (at `base_revision`) into `state`."""
    upsert = changed_peers(base, state.peers)
    keys = {peer.public_key for peer in state.peers}
    remove = [key for key in base if key not in keys]
    return DesiredDelta.model_construct(
        base_revision=base_revision,
        revision=state.revision,
        interface=state.interface,
        upsert=upsert,
        remove=remove,
        report_applied=state.report_applied,
        garden=state.garden,
    )


class DeltaRefused(ValueError):
    """A delta that does not follow from the state held, or would break it; the book is
    left as it was (ask for the whole state)."""


@dataclass
class PeerBook:
    """The last good desired state as the agent holds it: peers by key, and which peer
    claims each address (what a delta's new addresses are checked against)."""

    state: DesiredState
    tag: str | None = None
    specs: dict[str, PeerSpec] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, state: DesiredState, tag: str | None = None) -> PeerBook:
        specs = peers_by_key(state)
        owners = {address: peer.public_key for peer in state.peers for address in peer.allowed_ips}
        return cls(state=state, tag=tag, specs=specs, owners=owners)

    def apply(self, delta: DesiredDelta, tag: str) -> dict[str, PeerSpec | None]:
        """Apply `delta` (checked first: nothing changes if it is refused); the peers it
        changed (None: removed)."""
        if delta.base_revision != self.state.revision:
            raise DeltaRefused(
                f"a delta from revision {delta.base_revision}, the state held is at "
                f"{self.state.revision}"
            )
        if _blocks(delta) != _blocks(self.state):
            raise DeltaRefused("the interface's address blocks changed: the whole state")
        touched = {peer.public_key for peer in delta.upsert} | set(delta.remove)
        for peer in delta.upsert:  # among themselves, the delta's validator checked them
            for address in peer.allowed_ips:
                holder = self.owners.get(address)
                if holder is not None and holder not in touched:
                    raise DeltaRefused(f"{address} is another peer's")
        added = sum(peer.public_key not in self.specs for peer in delta.upsert)
        removed = sum(key in self.specs for key in delta.remove)
        if len(self.specs) + added - removed > MAX_PEERS:
            raise DeltaRefused("more peers than a desired state may hold")
        changes: dict[str, PeerSpec | None] = {}
        for key in touched:
            old = self.specs.pop(key, None)
            for address in old.allowed_ips if old is not None else ():
                if self.owners.get(address) == key:
                    del self.owners[address]
            changes[key] = None
        for peer in delta.upsert:
            self.specs[peer.public_key] = peer
            for address in peer.allowed_ips:
                self.owners[address] = peer.public_key
            changes[peer.public_key] = peer
        self.state = DesiredState.model_construct(
            revision=delta.revision,
            interface=delta.interface,
            peers=list(self.specs.values()),
            report_applied=delta.report_applied,
            garden=delta.garden,
        )
        self.tag = tag
        return changes


def _blocks(body: DesiredState | DesiredDelta) -> list[str] | None:
    return body.interface.addresses if body.interface is not None else None
