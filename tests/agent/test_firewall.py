"""The gateway firewall's rules as data: what a phone may reach, rendered into nftables."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence

import pytest

from kswifi.agent.drivers.nftables import NftConfig, render_skeleton
from kswifi.agent.errors import DriverError
from kswifi.agent.firewall import FirewallPolicy, onlink_networks, parse_port

DOCUMENTATION = ("192.0.2.7", "198.51.100.2", "203.0.113.9", "2001:db8::1", "2001:db8:2::2")
NON_GLOBAL = (
    "0.1.2.3", "10.9.8.7", "100.64.0.1", "127.0.0.1", "169.254.169.254", "172.20.0.1",
    "192.0.0.8", "192.168.1.1", "198.18.0.1", "224.0.0.251", "255.255.255.255",
    "::", "::1", "::ffff:10.0.0.1", "64:ff9b:1::1", "100::1", "fd00::1", "fe80::1", "ff02::1",
)  # fmt: skip


class TestPolicy:
    @pytest.mark.parametrize("address", NON_GLOBAL)
    def test_every_non_global_destination_is_refused(self, address: str) -> None:
        assert FirewallPolicy().refuses(address)

    @pytest.mark.parametrize("address", DOCUMENTATION)
    def test_the_documentation_ranges_stay_reachable(self, address: str) -> None:
        assert not FirewallPolicy().refuses(address)

    def test_onlink_networks_are_refused_even_documentation_ones(self) -> None:
        onlink = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8:1::/64")]
        policy = FirewallPolicy().with_onlink(onlink)
        assert policy.refuses("192.0.2.254") and policy.refuses("2001:db8:1::fe")
        assert not policy.refuses("198.51.100.2") and not policy.refuses("2001:db8:2::2")
        # A later read replaces the on-link part instead of piling up.
        assert not policy.with_onlink([]).refuses("192.0.2.254")

    def test_allowed_networks_come_back_through_the_blocked_ones(self) -> None:
        policy = FirewallPolicy.build(allowed=["10.20.0.0/16", "fd00:1::/64"])
        assert not policy.refuses("10.20.1.1") and policy.refuses("10.21.1.1")
        assert not policy.refuses("fd00:1::5") and policy.refuses("fd00:2::5")

    def test_overlaps_are_merged_for_the_interval_sets(self) -> None:
        policy = FirewallPolicy.build(extra_blocked=["10.1.0.0/16", "203.0.113.0/25"])
        policy = policy.with_onlink([ipaddress.ip_network("10.0.0.0/24")])
        blocked = policy.blocked_v4()
        assert blocked.count("10.0.0.0/8") == 1 and not any(b.startswith("10.1.") for b in blocked)
        assert "203.0.113.0/25" in blocked
        nets = [ipaddress.ip_network(b) for b in blocked]
        assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])

    @pytest.mark.parametrize(
        ("text", "parsed"),
        [("25", ("tcp", 25)), ("tcp/465", ("tcp", 465)), ("UDP/137", ("udp", 137))],
    )
    def test_ports(self, text: str, parsed: tuple[str, int]) -> None:
        assert parse_port(text) == parsed


class TestSkeleton:
    def rules(self, policy: FirewallPolicy | None = None) -> list[str]:
        config = NftConfig("kswifi0", "eth0", policy=policy or FirewallPolicy())
        return render_skeleton(config)

    def test_phones_reach_only_the_wan_and_refusals_answer_at_once(self) -> None:
        lines = self.rules()
        assert 'add rule inet kswifi from_peer oifname != "eth0" jump refuse' in lines
        assert "add rule inet kswifi refuse meta l4proto tcp reject with tcp reset" in lines
        assert "add rule inet kswifi refuse reject with icmpx admin-prohibited" in lines
        # A flow's later packets skip the checks its first packet passed.
        shortcut = lines.index(
            "add rule inet kswifi from_peer ct state established,related goto upload"
        )
        checks = [i for i, line in enumerate(lines) if "from_peer" in line and "@blocked" in line]
        assert shortcut < min(checks)
        refuse_first = [i for i, line in enumerate(lines) if "jump refuse" in line]
        counting = [i for i, line in enumerate(lines) if "counter name" in line]
        assert max(refuse_first) < min(counting)  # refused packets are never billed

    def test_downloads_pass_the_stateful_gate_then_the_loop_then_the_counters(self) -> None:
        lines = self.rules()
        assert (
            'add rule inet kswifi forward iifname "eth0" oifname "dl-kswifi0" jump from_internet'
        ) in lines
        assert "add rule inet kswifi from_internet ct state established,related accept" in lines
        assert "add rule inet kswifi from_internet drop" in lines
        assert (
            'add rule inet kswifi forward iifname "dlr-kswifi0" oifname "kswifi0" jump to_peer'
        ) in lines
        assert 'add rule inet kswifi untrack iifname "dlr-kswifi0" notrack' in lines
        # Nothing reaches the tunnel any other way.
        assert 'add rule inet kswifi forward oifname { "kswifi0", "dl-kswifi0" } drop' in lines

    def test_the_gateway_answers_phones_with_replies_and_limited_echo_only(self) -> None:
        lines = self.rules()
        chain = [line for line in lines if " to_gateway " in line and "add rule" in line]
        # The limit comes before conntrack's shortcut: later requests of one ping are
        # "established" once the first was answered.
        assert chain[0].endswith(
            "icmp type echo-request fib daddr . iif type local"
            " limit rate over 20/second burst 40 packets drop"
        )
        assert "icmpv6 type echo-request" in chain[1] and chain[1].endswith("drop")
        assert chain[2].endswith("icmp type echo-request fib daddr . iif type local accept")
        assert chain[4].endswith("ct state established,related accept")
        assert chain[-1].endswith("jump refuse")

    def test_policy_sets_are_refilled_and_connection_sets_kept(self) -> None:
        policy = FirewallPolicy.build(blocked_ports=["25", "udp/137"], max_connections=99)
        lines = self.rules(policy)
        assert "flush set inet kswifi blocked4" in lines
        assert not any(line.startswith("flush set inet kswifi conn") for line in lines)
        assert "add element inet kswifi blocked_ports { tcp . 25, udp . 137 }" in lines
        assert any("add @conn4 { ip saddr ct count over 99 } jump refuse" in x for x in lines)
        assert any("add @conn6 { ip6 saddr ct count over 99 } jump refuse" in x for x in lines)
        blocked4 = next(x for x in lines if x.startswith("add element inet kswifi blocked4"))
        assert "169.254.0.0/16" in blocked4 and "198.51.100" not in blocked4

    def test_no_ports_renders_no_empty_element_list(self) -> None:
        lines = self.rules(FirewallPolicy.build(blocked_ports=[]))
        assert not any("add element inet kswifi blocked_ports" in line for line in lines)
        assert not any("add element inet kswifi allowed4" in line for line in lines)


class FakeRoutes:
    def __init__(self, v4: list[dict[str, object]], v6: list[dict[str, object]]) -> None:
        self.outputs = {"-4": json.dumps(v4), "-6": json.dumps(v6)}

    def __call__(
        self, argv: Sequence[str], *, input_text: str | None = None, timeout: float | None = None
    ) -> str:
        return self.outputs[argv[2]]


def test_onlink_networks_are_the_routes_without_a_gateway() -> None:
    runner = FakeRoutes(
        [
            {"dst": "default", "gateway": "192.0.2.254", "dev": "eth0"},
            {"dst": "192.0.2.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link"},
            {"dst": "203.0.113.64/26", "dev": "eth0", "scope": "link"},
            {"dst": "198.51.100.0/24", "gateway": "192.0.2.1", "dev": "eth0"},
            {"dst": "192.0.2.255", "type": "broadcast", "dev": "eth0"},
        ],
        [
            {"dst": "2001:db8:1::/64", "dev": "eth0"},
            {"dst": "fe80::/64", "dev": "eth0"},
            {"dst": "default", "gateway": "2001:db8:1::fe", "dev": "eth0"},
        ],
    )
    found = {str(n) for n in onlink_networks(runner, "eth0")}
    assert found == {"192.0.2.0/24", "203.0.113.64/26", "2001:db8:1::/64", "fe80::/64"}


def test_unreadable_routes_are_a_driver_error() -> None:
    from kswifi.agent.errors import CommandError

    def failing(argv: Sequence[str], **_: object) -> str:
        raise CommandError(list(argv), 1, "Cannot find device")

    with pytest.raises(DriverError, match="cannot read the routes"):
        onlink_networks(failing, "eth9")
