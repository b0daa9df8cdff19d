"""The last desired state this process sent each gateway, so the next answer can be a delta.

An agent that takes changes names the answer it holds (`known`, the tag it came with). Only
the process that sent that answer knows exactly what it held (a state's content can change
within one revision: a session expiring moves its peers to the garden), so any other process,
or this one after a restart, answers with the whole state and the agent starts over from it.

Held in memory: one peer map per gateway (the specs of the answer, shared with it).
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass

from kswifi.protocol import models as protocol
from kswifi.protocol.deltas import make_delta, peers_by_key

_PROCESS = secrets.token_hex(6)
_NUMBERS = itertools.count(1)


@dataclass(frozen=True)
class _Sent:
    tag: str
    revision: int
    interface: protocol.GatewayInterface | None
    peers: dict[str, protocol.PeerSpec]


_SENT: dict[str, _Sent] = {}


def answer(
    gateway_id: str, state: protocol.DesiredState, known: str | None
) -> protocol.DesiredUpdate:
    """`state` as the whole state, or as the changes from the answer tagged `known`."""
    tag = f"{_PROCESS}.{next(_NUMBERS)}"
    sent = _SENT.get(gateway_id)
    _SENT[gateway_id] = _Sent(tag, state.revision, state.interface, peers_by_key(state))
    if known is None or sent is None or sent.tag != known or sent.interface != state.interface:
        return protocol.DesiredUpdate.model_construct(kind="full", tag=tag, state=state, delta=None)
    delta = make_delta(sent.peers, sent.revision, state)
    return protocol.DesiredUpdate.model_construct(kind="delta", tag=tag, state=None, delta=delta)
