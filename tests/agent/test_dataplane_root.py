"""The real drivers in network namespaces: tunnel, reconcile, quota cut-off, shaping, restart."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kswifi.agent.dataplane import KernelDataplane
from kswifi.agent.desired import desired_from_state
from kswifi.agent.model import SessionObjects
from kswifi.agent.reconcile import diff
from kswifi.protocol import DesiredState, GatewayInterface, PeerSpec

from .conftest import GATEWAY_PORT, Phone, Topology
from .netlab import SERVER_V4, SERVER_V6, steady_rate

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


def settled_usage(dataplane: KernelDataplane, session_id: str) -> SessionObjects:
    """The session's quota and counters once no packet moves them any more: one read dumps
    the counters and the quota one after the other, so a last ACK of a closing connection
    can land between them."""
    previous = None
    for _ in range(50):
        current = dataplane.read_usage().sessions[session_id]
        if current == previous:
            return current
        previous = current
        time.sleep(0.1)
    raise AssertionError(f"usage of {session_id} still moving: {previous}")


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


def test_gateway_down_removes_what_the_agent_left_in_the_kernel(topology: Topology) -> None:
    """The data plane outlives the agent (phones keep their tunnels through a restart);
    `kswifi gateway down` is how an operator removes it."""
    from kswifi.agent.cli import teardown
    from kswifi.agent.drivers.loop import DEFAULT_ROUTE_TABLE

    dataplane = topology.dataplane()
    dataplane.prepare()
    phone = topology.new_phone()
    reconcile(dataplane, state(topology, 1, [peer_spec(phone, "sess-a")]))
    links = topology.lab.sh(topology.gw, ["ip", "-br", "link"])
    assert topology.wg in links and topology.ifb in links and topology.download in links
    removed = teardown(topology.runner(), topology.wg, topology.ifb, DEFAULT_ROUTE_TABLE)
    assert len(removed) == 4, removed
    links = topology.lab.sh(topology.gw, ["ip", "-br", "link"])
    assert topology.wg not in links and topology.ifb not in links
    assert topology.download not in links
    assert "kswifi" not in topology.lab.sh(topology.gw, ["nft", "list", "tables"])
    assert "27507" not in topology.lab.sh(topology.gw, ["ip", "rule"])
    # Nothing left: a second run removes nothing and fails nothing.
    teardown(topology.runner(), topology.wg, topology.ifb, DEFAULT_ROUTE_TABLE)


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
        after = settled_usage(dataplane, "sess-q")
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
        down = steady_rate(lambda: iperf(topology, phone, reverse=True), 10)
        up = steady_rate(lambda: iperf(topology, phone, reverse=False), 10)
        print(f"shaped 10 Mbit/s: download {down:.2f}, upload {up:.2f} Mbit/s")
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


class TestReconcileAgainstKernel:
    def test_sequence_of_desired_states_converges_every_time(self, topology: Topology) -> None:
        from kswifi.agent.keys import generate_private_key, public_key_of

        from .conftest import random_key

        dataplane = topology.dataplane()
        dataplane.prepare()
        a, b, c = (topology.new_phone() for _ in range(3))
        states = [
            [peer_spec(a, "s1", 10**6, 10), peer_spec(b, "s1", 10**6, 10), peer_spec(c, "s2")],
            # c's keys rotate (same address), b leaves, s1 changes tier and lease.
            [
                peer_spec(a, "s1", 2 * 10**6, 25),
                peer_spec(c, "s2").model_copy(
                    update={
                        "public_key": public_key_of(generate_private_key()),
                        "preshared_key": random_key(),
                    }
                ),
            ],
            [],
        ]
        for revision, peers in enumerate(states, start=1):
            wanted = state(topology, revision, peers)
            reconcile(dataplane, wanted)
            reconcile(dataplane, wanted)  # second pass: objects of unmapped sessions go
            assert converged(dataplane, wanted) == []
            actual = dataplane.observe().actual({})
            assert set(actual.peers) == {p.public_key for p in peers}
            assert set(actual.sessions) == {p.session_id for p in peers}
            assert set(actual.rates) == {p.session_id for p in peers}
        tc = dataplane.tc.read()
        assert tc.download.filters == {} and tc.upload.filters == {}
        assert tc.download.classes == {} and tc.upload.classes == {}


class TestAgentRestart:
    async def test_restarted_agent_keeps_the_phone_connected(
        self, topology: Topology, tmp_path: Path
    ) -> None:
        from kswifi.agent.config import GatewaySettings
        from kswifi.agent.main import Agent

        from .fakes import FakeControlPlane

        phone = topology.new_phone()
        control = FakeControlPlane([state(topology, 1, [peer_spec(phone, "sess-r")])])
        settings = GatewaySettings(
            control_url="http://control.invalid",
            token="t",
            endpoint="203.0.113.1:51820",
            wan_interface=topology.wan,
            interface=topology.wg,
            ifb_interface=topology.ifb,
            state_dir=tmp_path / "gw",
        )
        first = Agent(settings, topology.dataplane(), control)
        await first.start()
        first.desired_state = (await control.desired_update()).state
        assert await first.reconcile_once()
        topology.connect(phone)
        topology.serve(8000)
        before = topology.traffic(phone, "fetch", SERVER_V4, "8000", "500000", "3")
        await first.usage_once()
        assert await first.deliver_usage() == 1
        handshake = topology.dataplane().read_peers().peers[phone.public_key].latest_handshake
        assert handshake is not None

        # The agent dies (no cleanup); a new one starts with the control plane unreachable.
        del first
        control.up = False
        second = Agent(settings, topology.dataplane(), control)
        await second.start()
        assert await second.reconcile_once() == []
        after = topology.traffic(phone, "fetch", SERVER_V4, "8000", "500000", "3")
        assert before["received"] == after["received"] == 500_000
        peers = topology.dataplane().read_peers().peers
        assert peers[phone.public_key].latest_handshake == handshake  # same tunnel, no rekey
        await second.usage_once()
        control.up = True
        assert await second.deliver_usage() == 1
        assert 1_000_000 < control.totals["sess-r"] < 1_300_000


def filler_specs(count: int, speed_mbps: int = 25) -> list[PeerSpec]:
    """Sessions without a phone behind them (keys only), addresses 100.64.4.0 onwards."""
    from kswifi.agent.keys import generate_private_key, public_key_of

    from .conftest import random_key

    return [
        PeerSpec(
            public_key=public_key_of(generate_private_key()),
            preshared_key=random_key(),
            allowed_ips=[f"100.64.{4 + i // 256}.{i % 256}/32", f"fd6b:7377:6966:1::{i:x}/128"],
            session_id=f"a-filler-{i:04d}",
            quota_bytes=10**9,
            speed_mbps=speed_mbps,
        )
        for i in range(count)
    ]


def class_stats(topology: Topology, device: str, classid: str) -> int:
    """Bytes the kernel sent through one HTB class."""
    import re

    text = topology.lab.sh(
        topology.gw, ["tc", "-s", "class", "show", "dev", device, "classid", classid]
    )
    found = re.search(r"Sent (\d+) bytes", text)
    assert found, text
    return int(found.group(1))


class TestBuckets:
    def test_session_in_the_second_bucket_is_shaped_in_its_child_qdisc(
        self, topology: Topology
    ) -> None:
        from kswifi.agent.drivers.tc_layout import BUCKET_SIZE, bucket_of

        dataplane = topology.dataplane()
        dataplane.prepare()
        phone = topology.new_phone()
        fillers = filler_specs(BUCKET_SIZE + 40)
        # Minors go in session order: the fillers ("a-…") fill bucket 0, the phone lands in 1.
        wanted = state(topology, 1, [*fillers, peer_spec(phone, "z-phone", speed_mbps=10)])
        reconcile(dataplane, wanted)
        assert converged(dataplane, wanted) == []  # the full read parses the bucketed layout

        observation = dataplane.observe()
        minor = observation.session_minors["z-phone"]
        assert bucket_of(minor) == 1
        classid = f"3:{minor:x}"
        for device in (topology.download, topology.ifb):
            qdiscs = topology.lab.sh(topology.gw, ["tc", "qdisc", "show", "dev", device])
            assert "qdisc htb 2: parent 1:1" in qdiscs and "qdisc htb 3: parent 1:2" in qdiscs
            classes = topology.lab.sh(topology.gw, ["tc", "class", "show", "dev", device])
            assert classes.count("class htb 2:") == BUCKET_SIZE
            assert classes.count("class htb 3:") == 41
            assert f"class htb {classid} root " in classes

        topology.connect(phone)
        topology.lab.popen(topology.inet, ["iperf3", "-s", "-B", SERVER_V4], stdout=-3)
        import time

        time.sleep(0.3)
        down = steady_rate(lambda: iperf(topology, phone, reverse=True), 10)
        up = steady_rate(lambda: iperf(topology, phone, reverse=False), 10)
        print(f"bucket 1, 10 Mbit/s: download {down:.2f}, upload {up:.2f} Mbit/s")
        assert 9.0 <= down <= 11.0, down
        assert 9.0 <= up <= 11.0, up
        # The bytes went through the phone's class in the child qdisc, on both devices.
        assert class_stats(topology, topology.download, classid) > 3_000_000
        assert class_stats(topology, topology.ifb, classid) > 3_000_000

        # Tier change in place; then bucket 0 empties and is removed, bucket 1 stays.
        assert (
            reconcile(dataplane, state(topology, 2, [*fillers, peer_spec(phone, "z-phone")])) == 1
        )
        only_phone = state(topology, 3, [peer_spec(phone, "z-phone")])
        reconcile(dataplane, only_phone)
        reconcile(dataplane, only_phone)
        assert converged(dataplane, only_phone) == []
        for device in (topology.download, topology.ifb):
            classes = topology.lab.sh(topology.gw, ["tc", "class", "show", "dev", device])
            assert "class htb 1:1 " not in classes and "class htb 2:" not in classes
            assert f"class htb {classid} root " in classes

        reconcile(dataplane, state(topology, 4, []))
        for device in (topology.download, topology.ifb):
            classes = topology.lab.sh(topology.gw, ["tc", "class", "show", "dev", device])
            # Only the walled garden's shared class is left.
            assert [line.split()[2] for line in classes.strip().splitlines()] == ["1:ffff"]

    def test_a_flat_layout_left_by_an_older_agent_is_rebuilt(self, topology: Topology) -> None:
        dataplane = topology.dataplane()
        dataplane.prepare()
        phone = topology.new_phone()
        dataplane.tc.teardown()
        # The flat layout: session classes directly under the root HTB.
        for device in (topology.wg,):
            topology.lab.sh(
                topology.gw,
                ["tc", "-batch", "-"],
                input_text=(
                    f"qdisc add dev {device} root handle 1: htb default 0 r2q 100\n"
                    f"class add dev {device} parent 1: classid 1:5 htb rate 10mbit\n"
                ),
            )
        dataplane.prepare()
        wanted = state(topology, 1, [peer_spec(phone, "sess-f", speed_mbps=10)])
        reconcile(dataplane, wanted)
        assert converged(dataplane, wanted) == []
        # An older agent shaped downloads on the WireGuard device: that layout is gone, the
        # session is shaped on the download loop.
        old = topology.lab.sh(topology.gw, ["tc", "class", "show", "dev", topology.wg])
        assert old.strip() == ""
        classes = topology.lab.sh(topology.gw, ["tc", "class", "show", "dev", topology.download])
        assert "class htb 2:1 " in classes
