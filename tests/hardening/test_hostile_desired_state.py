"""The gateway agent given a malformed or hostile desired state, or a delta that does not follow
or would break the state it holds, refuses it, says so in its log, and keeps serving the last
good state (asking for the whole state again after a refused delta).

The agent's real control-plane client reads the answers (served by an httpx MockTransport); the
kernel is the in-memory fake of tests/agent. Hostile here means: keys that are not keys, two
peers with one key or one address (one person's traffic routed to another), an address outside
the gateway's blocks (a peer claiming 1.1.1.1 would receive everyone's DNS), a network where a
single address belongs, more peers than the protocol allows, garbage instead of JSON.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from pydantic import ValidationError

from kswifi.agent.client import ControlPlaneClient
from kswifi.agent.config import GatewaySettings
from kswifi.agent.errors import ControlPlaneError
from kswifi.agent.main import Agent
from kswifi.protocol import DesiredState
from kswifi.protocol.models import MAX_PEERS
from tests.agent.fakes import FakeDataplane


def key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


def peer(n: int, session: str = "", v4: str = "", v6: str = "") -> dict[str, Any]:
    return {
        "public_key": key(n),
        "preshared_key": key(100 + n),
        "allowed_ips": [v4 or f"100.64.0.{n}/32", v6 or f"fd4b:5357:4946::{n:x}/128"],
        "session_id": session or f"s{n}",
        "quota_bytes": 1_000_000,
        "speed_mbps": 10,
    }


def state(revision: int, *peers: dict[str, Any]) -> dict[str, Any]:
    return {
        "revision": revision,
        "interface": {
            "private_key": key(200),
            "public_key": key(201),
            "listen_port": 51820,
            "addresses": ["100.64.0.1/16", "fd4b:5357:4946::1/64"],
        },
        "peers": list(peers),
    }


GOOD = state(1, peer(2), peer(3))

HOSTILE: dict[str, Callable[[], Any]] = {
    "public key not base64": lambda: state(2, {**peer(2), "public_key": "not a key!"}),
    "public key of 31 bytes": lambda: state(
        2, {**peer(2), "public_key": base64.b64encode(b"k" * 31).decode()}
    ),
    "preshared key missing": lambda: state(
        2, {k: v for k, v in peer(2).items() if k != "preshared_key"}
    ),
    "two peers, one public key": lambda: state(2, peer(2), {**peer(3), "public_key": key(2)}),
    "two peers, one IPv4 address": lambda: state(2, peer(2), peer(3, v4="100.64.0.2/32")),
    "two peers, one IPv6 address": lambda: state(2, peer(2), peer(3, v6="fd4b:5357:4946::2/128")),
    "an address written differently but equal": lambda: state(
        2, peer(2), peer(3, v6="fd4b:5357:4946:0:0:0:0:2/128")
    ),
    "an address outside the gateway's block": lambda: state(2, peer(2), peer(3, v4="1.1.1.1/32")),
    "a network instead of one address": lambda: state(2, peer(2, v4="0.0.0.0/0")),
    "negative quota": lambda: state(2, {**peer(2), "quota_bytes": -1}),
    "unknown field": lambda: state(2, {**peer(2), "route_all": True}),
    "peers not a list": lambda: {**state(2), "peers": {"a": 1}},
    "not JSON": lambda: b"<html>502 Bad Gateway</html>",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_the_protocol_model_refuses_it(case: str) -> None:
    payload = HOSTILE[case]()
    with pytest.raises(ValidationError):
        if isinstance(payload, bytes):
            DesiredState.model_validate_json(payload)
        else:
            DesiredState.model_validate(payload)


def test_the_peer_list_is_bounded() -> None:
    # Building 100,001 peers to prove it would take seconds; the bound is on the field.
    metadata = DesiredState.model_fields["peers"].metadata
    assert any(getattr(item, "max_length", None) == MAX_PEERS for item in metadata)
    DesiredState.model_validate(GOOD)


@pytest.fixture
def settings(tmp_path: Path) -> GatewaySettings:
    return GatewaySettings(
        control_url="http://control.invalid",
        token="t0ken",
        endpoint="gw.example.net:51820",
        wan_interface="eth9",
        state_dir=tmp_path / "state",
    )


def full(body: dict[str, Any], tag: str = "t1") -> dict[str, Any]:
    return {"kind": "full", "tag": tag, "state": body}


def delta(base: int, revision: int, tag: str = "t2", **change: Any) -> dict[str, Any]:
    body = {
        "base_revision": base,
        "revision": revision,
        "interface": GOOD["interface"],
        "upsert": [],
        "remove": [],
        **change,
    }
    return {"kind": "delta", "tag": tag, "delta": body}


class Answers:
    """The control plane's answers to the agent's desired-state requests, in order (a bare
    state is sent as a whole-state update)."""

    def __init__(self, *bodies: Any) -> None:
        self.bodies = list(bodies)
        self.served = 0
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = self.bodies[min(self.served, len(self.bodies) - 1)]
        self.served += 1
        if isinstance(body, dict) and "kind" not in body:
            body = full(body)
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(200, content=content, headers={"Content-Type": "application/json"})


async def test_the_agent_keeps_its_last_good_state(settings: GatewaySettings) -> None:
    hostile = [HOSTILE[case]() for case in sorted(HOSTILE)]
    answers = Answers(GOOD, *hostile)
    control = ControlPlaneClient(
        "http://control.invalid", "t0ken", transport=httpx.MockTransport(answers)
    )
    kernel = FakeDataplane()
    agent = Agent(settings, kernel, control)  # type: ignore[arg-type]
    await agent.start()
    agent.desired_state = (await control.desired_update()).state
    await agent.reconcile_once()
    good_peers = dict(kernel.state.peers)
    assert set(good_peers) == {key(2), key(3)}
    for body in hostile:
        with pytest.raises(ControlPlaneError):
            await control.desired_update()
        await agent.reconcile_once(full=True)
        assert agent.desired_state is not None and agent.desired_state.revision == 1
        assert dict(kernel.state.peers) == good_peers, body
    await control.aclose()


async def test_the_refusal_is_logged_by_the_poll_loop(settings: GatewaySettings) -> None:
    answers = Answers(GOOD, HOSTILE["two peers, one IPv4 address"]())
    control = ControlPlaneClient(
        "http://control.invalid", "t0ken", transport=httpx.MockTransport(answers)
    )
    kernel = FakeDataplane()
    agent = Agent(settings, kernel, control)  # type: ignore[arg-type]
    await agent.start()
    with structlog.testing.capture_logs() as logs:
        poll = asyncio.create_task(agent._poll_loop())
        for _ in range(100):
            if any("share the address" in str(entry) for entry in logs):
                break
            await asyncio.sleep(0.02)
        poll.cancel()
        with pytest.raises(asyncio.CancelledError):
            await poll
    refusals = [entry for entry in logs if "share the address" in str(entry)]
    assert refusals, logs
    assert refusals[0]["log_level"] in ("warning", "error")
    assert agent.desired_state is not None and agent.desired_state.revision == 1
    await control.aclose()


HOSTILE_DELTAS: dict[str, dict[str, Any]] = {
    "a gap: from a revision the agent does not hold": delta(5, 6, upsert=[peer(4)]),
    "an address another peer keeps": delta(1, 2, upsert=[peer(4, v4="100.64.0.2/32")]),
    "the interface's blocks changed under the peers": delta(
        1, 2, interface={**GOOD["interface"], "addresses": ["10.9.0.1/16", "fd00:9::1/64"]}
    ),
}
INVALID_DELTAS: dict[str, dict[str, Any]] = {
    "a peer changed and removed at once": delta(1, 2, upsert=[peer(4)], remove=[key(4)]),
    "two new peers, one address": delta(1, 2, upsert=[peer(4), peer(5, v4="100.64.0.4/32")]),
    "an address outside the gateway's block": delta(1, 2, upsert=[peer(4, v4="1.1.1.1/32")]),
    "back to an older revision": delta(1, 0),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_DELTAS) + sorted(INVALID_DELTAS))
async def test_a_hostile_delta_is_refused_and_the_whole_state_asked_again(
    settings: GatewaySettings, case: str
) -> None:
    hostile = HOSTILE_DELTAS.get(case) or INVALID_DELTAS[case]
    good_again = delta(1, 2, tag="t3", upsert=[peer(6)])
    answers = Answers(full(GOOD), hostile, full(GOOD, tag="t4"), good_again)
    control = ControlPlaneClient(
        "http://control.invalid", "t0ken", transport=httpx.MockTransport(answers)
    )
    kernel = FakeDataplane()
    agent = Agent(settings, kernel, control)  # type: ignore[arg-type]
    await agent.start()
    with structlog.testing.capture_logs() as logs:
        poll = asyncio.create_task(agent._poll_loop())
        for _ in range(400):
            if answers.served >= 4 and agent.desired_state and agent.desired_state.revision == 2:
                break
            await asyncio.sleep(0.02)
        poll.cancel()
        with pytest.raises(asyncio.CancelledError):
            await poll
    await control.aclose()
    # The hostile delta changed nothing; the agent then asked for the whole state (no
    # `since`), and followed the next good delta from it.
    params = [dict(request.url.params) for request in answers.requests[:4]]
    assert params[1] == {"changes": "true", "since": "1", "known": "t1"}
    assert params[2] == {"changes": "true"}, params
    assert params[3] == {"changes": "true", "since": "1", "known": "t4"}
    assert agent.desired_state is not None and agent.desired_state.revision == 2
    assert {p.public_key for p in agent.desired_state.peers} == {key(2), key(3), key(6)}
    if case in HOSTILE_DELTAS:
        refused = [entry for entry in logs if entry["event"] == "desired_delta_refused"]
        assert refused and refused[0]["log_level"] == "warning" and refused[0]["kept"] == 1
