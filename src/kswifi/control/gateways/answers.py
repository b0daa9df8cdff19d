"""The last desired state this process sent each gateway, so the next answer can be a delta.

An agent that takes changes names the answer it holds (`known`, the tag it came with). Only
the process that sent that answer knows exactly what it held (a state's content can change
within one revision: a session expiring moves its peers to the garden), so any other process,
or this one after a restart, answers with the whole state and the agent starts over from it.

What is kept per gateway is what the next answer is built from without going over every
device again (`kswifi.control.gateways.desired`): the peers sent, whose they are, when the
sessions they draw from run out, and which of those sessions other gateways carry too.
Held in memory: one peer map per gateway (the specs of the answer, shared with it).
"""

from __future__ import annotations

import heapq
import itertools
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kswifi.control.gateways.repository import PeerRow
from kswifi.protocol import models as protocol
from kswifi.protocol.deltas import changed_peers, make_delta, peers_by_key

WHOLE_EVERY = timedelta(minutes=5)
"""How long answers may be built from changes alone: then one is made from every device
again (a change nobody recorded is sent by then; the agent gets a delta either way)."""

_PROCESS = secrets.token_hex(6)
_NUMBERS = itertools.count(1)


@dataclass
class Sent:
    """An answer this process sent a gateway, and what the next one is built from."""

    tag: str
    revision: int
    interface: protocol.GatewayInterface | None
    whole_at: datetime  # when the answer it descends from was made from every device
    peers: dict[str, protocol.PeerSpec]  # by public key
    keys_of: dict[str, list[str]] = field(default_factory=dict)  # the peers of each person
    ends: list[tuple[datetime, str]] = field(default_factory=list)  # (expires_at, person), heap
    shared: set[str] = field(default_factory=set)  # people drawing from a shared session

    def due(self, now: datetime) -> set[str]:
        """The people one of whose sessions ran out by `now` (taken off the heap)."""
        people: set[str] = set()
        while self.ends and self.ends[0][0] <= now:
            people.add(heapq.heappop(self.ends)[1])
        return people

    def note(
        self, rows: Sequence[PeerRow], specs: Sequence[protocol.PeerSpec], shared: Collection[str]
    ) -> None:
        """Record `rows` (made into `specs`) as the peers of their people now."""
        for row, spec in zip(rows, specs, strict=True):
            self.peers[spec.public_key] = spec
            self.keys_of.setdefault(row.user_id, []).append(spec.public_key)
            if row.session_id is None:
                continue
            if row.expires_at is not None:
                heapq.heappush(self.ends, (row.expires_at, row.user_id))
            if row.session_id in shared:
                self.shared.add(row.user_id)

    def forget(self, people: Collection[str]) -> dict[str, protocol.PeerSpec]:
        """Drop the peers of `people`; what they were."""
        dropped: dict[str, protocol.PeerSpec] = {}
        for person in people:
            for key in self.keys_of.pop(person, ()):
                spec = self.peers.pop(key, None)
                if spec is not None:
                    dropped[key] = spec
            self.shared.discard(person)
        return dropped


_SENT: dict[str, Sent] = {}


def _tag() -> str:
    return f"{_PROCESS}.{next(_NUMBERS)}"


def drop(gateway_id: str) -> None:
    """Forget what was sent the gateway: its next answer is whole (an answer failed half-way)."""
    _SENT.pop(gateway_id, None)


def held(gateway_id: str, known: str | None, now: datetime) -> Sent | None:
    """The answer tagged `known` if this process sent it last and it may be built on."""
    sent = _SENT.get(gateway_id)
    if known is None or sent is None or sent.tag != known or now - sent.whole_at >= WHOLE_EVERY:
        return None
    return sent


def answer(
    gateway_id: str,
    state: protocol.DesiredState,
    known: str | None,
    now: datetime,
    rows: Sequence[PeerRow] | None = None,
    shared: Collection[str] = (),
) -> protocol.DesiredUpdate:
    """`state` (made from every device: `rows`, in the order of its peers) as the whole
    state, or as the changes from the answer tagged `known`."""
    tag = _tag()
    sent = _SENT.get(gateway_id)
    kept = Sent(tag, state.revision, state.interface, now, {})
    if rows is not None:
        kept.note(rows, state.peers, shared)
    else:
        kept.peers = peers_by_key(state)
        kept.whole_at = now - WHOLE_EVERY  # whose peers they are is unknown: no changes alone
    _SENT[gateway_id] = kept
    if known is None or sent is None or sent.tag != known or sent.interface != state.interface:
        return protocol.DesiredUpdate.model_construct(kind="full", tag=tag, state=state, delta=None)
    delta = make_delta(sent.peers, sent.revision, state)
    return protocol.DesiredUpdate.model_construct(kind="delta", tag=tag, state=None, delta=delta)


def answer_changes(
    gateway_id: str,
    sent: Sent,
    *,
    revision: int,
    people: Collection[str],
    rows: Sequence[PeerRow],
    specs: Sequence[protocol.PeerSpec],
    shared: Collection[str],
    report_applied: bool,
    garden: protocol.GardenSpec | None,
) -> protocol.DesiredUpdate:
    """The delta from `sent` when only the peers of `people` changed (now `rows`, made into
    `specs`); `sent` becomes this answer."""
    before = sent.forget(people)
    sent.note(rows, specs, shared)
    upsert = changed_peers(before, specs)
    remove = [key for key in before if key not in sent.peers]
    delta = protocol.DesiredDelta.model_construct(
        base_revision=sent.revision,
        revision=revision,
        interface=sent.interface,
        upsert=upsert,
        remove=remove,
        report_applied=report_applied,
        garden=garden,
    )
    sent.tag, sent.revision = _tag(), revision
    _SENT[gateway_id] = sent
    return protocol.DesiredUpdate.model_construct(
        kind="delta", tag=sent.tag, state=None, delta=delta
    )
