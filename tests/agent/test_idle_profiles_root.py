"""Idle profiles cost the kernel nothing of their own: thousands of garden peers beside a few
hundred sessions hold no HTB class, quota or counter each, and one of them becoming current
(a delta from the control plane) gets its session's class, quota and counters while every
other object stays exactly as it was."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from kswifi.agent.config import GatewaySettings
from kswifi.agent.keys import generate_private_key, public_key_of
from kswifi.agent.main import Agent
from kswifi.protocol import DesiredState, GardenSpec, GatewayInterface, PeerSpec
from tests.agent.conftest import GATEWAY_PORT, Topology
from tests.agent.fakes import FakeControlPlane
from tests.agent.test_agent import poll_once

pytestmark = pytest.mark.root

GARDEN_PEERS = 2_000
SESSIONS = 200
V4 = ipaddress.ip_network("100.64.0.0/10")
V6 = ipaddress.ip_network("fd6b:7377:6966::/48")
PSK = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def _peer(index: int, session: str | None) -> PeerSpec:
    return PeerSpec.model_construct(
        public_key=public_key_of(generate_private_key()),
        preshared_key=PSK,
        allowed_ips=[f"{V4[index + 2]}/32", f"{V6[index + 2]}/128"],
        session_id=session,
        quota_bytes=10**9 if session else 0,
        speed_mbps=25 if session else 0,
        expires_at=None,
    )


def _state(topology: Topology, revision: int, peers: list[PeerSpec]) -> DesiredState:
    return DesiredState(
        revision=revision,
        interface=GatewayInterface(
            private_key=topology.gateway_private_key,
            public_key=topology.gateway_public_key,
            listen_port=GATEWAY_PORT,
            addresses=["100.64.0.1/10", "fd6b:7377:6966::1/48"],
        ),
        peers=peers,
        garden=GardenSpec(
            allow=["198.51.100.3/32"], dns=["192.0.2.53"], redirect_url="https://shop.example/"
        ),
    )


def _kernel_objects(topology: Topology) -> tuple[list[str], list[str], dict[str, int]]:
    """tc classes of the gateway's devices, and the nf_tables quota and counter objects."""
    classes = [
        f"{device}: {line}"
        for device in (topology.download, topology.ifb)
        for line in topology.lab.sh(
            topology.gw, ["tc", "class", "show", "dev", device]
        ).splitlines()
    ]
    listed = json.loads(
        topology.lab.sh(topology.gw, ["nft", "-j", "list", "table", "inet", "kswifi"])
    )
    quotas, counters = [], {}
    for item in listed["nftables"]:
        if "quota" in item:
            quotas.append(item["quota"]["name"])
        elif "counter" in item:
            counters[item["counter"]["name"]] = item["counter"]["bytes"]
    return sorted(classes), sorted(quotas), counters


async def test_a_garden_peer_becoming_current_gets_only_its_own_objects(
    topology: Topology, tmp_path: Path
) -> None:
    garden = [_peer(index, None) for index in range(GARDEN_PEERS)]
    paying = [_peer(GARDEN_PEERS + index, f"s{index}") for index in range(SESSIONS)]
    control = FakeControlPlane([_state(topology, 1, [*garden, *paying])])
    settings = GatewaySettings(
        control_url="http://control.invalid",
        token="t",
        endpoint="203.0.113.1:51820",
        wan_interface=topology.wan,
        interface=topology.wg,
        ifb_interface=topology.ifb,
        state_dir=tmp_path / "gw",
    )
    agent = Agent(settings, topology.dataplane(), control)
    await agent.start()
    await poll_once(agent)
    classes, quotas, counters = _kernel_objects(topology)
    # Per direction: one class per session (plus the buckets and the garden's); garden peers
    # add none, nor any quota or counter.
    session_quotas = [name for name in quotas if name.startswith("q-")]
    assert len(session_quotas) == SESSIONS, quotas[:5]
    assert {name for name in counters if name.startswith(("up-", "dn-"))} == {
        f"{direction}-s{index}" for index in range(SESSIONS) for direction in ("up", "dn")
    }
    leaves = [line for line in classes if " parent " in line and "leaf " in line]
    assert len(leaves) <= 2 * (SESSIONS + 2), len(leaves)
    peers = topology.lab.sh(topology.gw, ["wg", "show", topology.wg, "peers"]).split()
    assert len(peers) == GARDEN_PEERS + SESSIONS

    # One garden peer's session becomes current: the control plane sends a delta.
    chosen = garden[123].model_copy(
        update={"session_id": "s-new", "quota_bytes": 10**9, "speed_mbps": 10}
    )
    control.states.append(_state(topology, 2, [*garden[:123], chosen, *garden[124:], *paying]))
    await poll_once(agent)
    assert control.answers[-1] == ("delta", 2)
    after_classes, after_quotas, after_counters = _kernel_objects(topology)
    assert set(after_quotas) - set(quotas) == {"q-s-new"}
    assert set(quotas) <= set(after_quotas)
    assert set(after_counters) - set(counters) == {"up-s-new", "dn-s-new"}
    assert {name: after_counters[name] for name in counters} == counters  # untouched
    new_classes = set(after_classes) - set(classes)
    assert set(classes) <= set(after_classes)  # every other class exactly as it was
    assert len(new_classes) == 2 and all("rate 10Mbit" in line for line in new_classes), new_classes
