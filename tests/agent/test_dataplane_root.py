"""The real drivers in network namespaces: tunnel, reconcile, quota cut-off, shaping, restart."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from kswifi.agent.dataplane import KernelDataplane
from kswifi.agent.reconcile import desired_from_state, diff
from kswifi.protocol import DesiredState, GatewayInterface, PeerSpec

from .conftest import GATEWAY_PORT, SERVER_V4, SERVER_V6, Phone, Topology

pytestmark = pytest.mark.root

GW_ADDRESSES = ["100.64.0.1/10", "fd6b:7377:6966::1/48"]


def peer_spec(
    phone: Phone, session_id: str, quota_bytes: int = 10**10, speed_mbps: int = 10_000
) -> PeerSpec:
    return PeerSpec(
        public_key=phone.public_key,
        preshared_key=phone.preshared_key,
        allowed_ips=phone.allowed_ips,
        session_id=session_id,
        quota_bytes=quota_bytes,
        speed_mbps=speed_mbps,
    )


def state(topology: Topology, revision: int, peers: Sequence[PeerSpec]) -> DesiredState:
    return DesiredState(
        revision=revision,
        interface=GatewayInterface(
            private_key=topology.gateway_private_key,
            public_key=topology.gateway_public_key,
            listen_port=GATEWAY_PORT,
            addresses=GW_ADDRESSES,
        ),
        peers=list(peers),
    )


def reconcile(dataplane: KernelDataplane, desired_state: DesiredState) -> int:
    """One reconcile pass; returns the number of actions applied."""
    desired = desired_from_state(desired_state, datetime.now(UTC))
    observation = dataplane.observe()
    actions = diff(desired, observation.actual({}))
    dataplane.apply(actions, observation)
    return len(actions)


def converged(dataplane: KernelDataplane, desired_state: DesiredState) -> list[object]:
    desired = desired_from_state(desired_state, datetime.now(UTC))
    return list(diff(desired, dataplane.observe().actual({})))


class TestTunnel:
    def test_phone_reaches_internet_v4_and_v6_through_wireguard_go(
        self, topology: Topology
    ) -> None:
        dataplane = topology.dataplane()
        assert dataplane.prepare() == "userspace"
        phone = topology.add_phone()
        wanted = state(topology, 1, [peer_spec(phone, "sess-a")])
        assert reconcile(dataplane, wanted) > 0
        assert converged(dataplane, wanted) == []

        topology.serve(8000)
        topology.serve(8001, SERVER_V6)
        v4 = topology.traffic(phone, "fetch", SERVER_V4, "8000", "2000000", "5")
        v6 = topology.traffic(phone, "fetch", SERVER_V6, "8001", "1000000", "5")
        assert v4["received"] == 2_000_000
        assert v6["received"] == 1_000_000

        usage = dataplane.read_usage().sessions["sess-a"]
        # Counted at the forward hook: IP packets with headers (and any TCP retransmissions).
        assert 3_000_000 <= usage.download_bytes < 3_000_000 * 1.2
        assert 0 < usage.upload_bytes < 300_000
