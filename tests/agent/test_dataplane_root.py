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
        phone = topology.new_phone()
        wanted = state(topology, 1, [peer_spec(phone, "sess-a")])
        assert reconcile(dataplane, wanted) > 0
        assert converged(dataplane, wanted) == []
        topology.connect(phone)

        topology.serve(8000)
        topology.serve(8001, SERVER_V6)
        v4 = topology.traffic(phone, "fetch", SERVER_V4, "8000", "2000000", "5")
        v6 = topology.traffic(phone, "fetch", SERVER_V6, "8001", "1000000", "5")
        assert v4["received"] == 2_000_000
        assert v6["received"] == 1_000_000

        usage = dataplane.read_usage().sessions["sess-a"]
        # Counted at the forward hook: IP packets with headers, and TCP retransmissions of
        # segments lost after the gateway (wireguard-go's small UDP buffers drop some here).
        assert 3_000_000 <= usage.download_bytes < 3_000_000 * 1.3
        assert 0 < usage.upload_bytes < 300_000


MB = 1024 * 1024
MTU = 1420


class TestQuota:
    def test_download_stops_exactly_at_the_quota_and_a_new_lease_resumes_it(
        self, topology: Topology
    ) -> None:
        dataplane = topology.dataplane()
        dataplane.prepare()
        phone = topology.new_phone()
        quota = 5 * MB
        reconcile(dataplane, state(topology, 1, [peer_spec(phone, "sess-q", quota_bytes=quota)]))
        topology.connect(phone)
        topology.serve(8000)

        result = topology.traffic(phone, "fetch", SERVER_V4, "8000", str(10 * MB), "1.5")
        usage = dataplane.read_usage().sessions["sess-q"]
        counted = usage.upload_bytes + usage.download_bytes
        assert usage.exhausted
        assert quota - MTU <= counted < quota, (counted, quota)
        assert result["received"] < quota

        # A bigger lease after exhaustion: the quota is replaced with used = bytes served, so
        # the packets the kernel dropped are not charged and traffic flows again.
        observation = dataplane.observe()
        served = {"sess-q": counted}
        bigger = state(topology, 2, [peer_spec(phone, "sess-q", quota_bytes=quota + 2 * MB)])
        actions = diff(desired_from_state(bigger, datetime.now(UTC)), observation.actual(served))
        dataplane.apply(actions, observation)
        again = topology.traffic(phone, "fetch", SERVER_V4, "8000", str(1 * MB), "3")
        assert again["received"] == 1 * MB
        after = dataplane.read_usage().sessions["sess-q"]
        assert after.used_bytes == after.upload_bytes + after.download_bytes
        assert not after.exhausted


def iperf(topology: Topology, phone: Phone, reverse: bool, seconds: int = 3) -> float:
    """Steady-state goodput in Mbit/s (the first second is omitted: slow start, bucket)."""
    import json

    argv = ["iperf3", "-c", SERVER_V4, "-t", str(seconds), "-O", "1", "-J"]
    if reverse:
        argv.append("-R")
    out = topology.lab.sh(phone.ns, argv, timeout=seconds + 20)
    report = json.loads(out)
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6


class TestShaping:
    def test_ten_megabit_tier_both_directions_then_tier_change_in_place(
        self, topology: Topology
    ) -> None:
        dataplane = topology.dataplane()
        dataplane.prepare()
        phone = topology.new_phone()
        reconcile(dataplane, state(topology, 1, [peer_spec(phone, "sess-s", speed_mbps=10)]))
        topology.connect(phone)
        topology.lab.popen(topology.inet, ["iperf3", "-s", "-B", SERVER_V4], stdout=-3)
        import time

        time.sleep(0.3)
        down = iperf(topology, phone, reverse=True)
        up = iperf(topology, phone, reverse=False)
        assert 9.0 <= down <= 11.0, down
        assert 9.0 <= up <= 11.0, up

        before = dataplane.tc.read()
        changes = reconcile(
            dataplane, state(topology, 2, [peer_spec(phone, "sess-s", speed_mbps=25)])
        )
        assert changes == 1  # SetRate only: `class replace` in place, filters untouched
        after = dataplane.tc.read()
        assert after.shaped() == before.shaped()
        assert set(after.minors().values()) == {25}
