"""The walled garden on the agent's side: peers without a session stay peers with no session
objects, the firewall lets them reach DNS and the app only, their plain HTTP lands on a
redirect to the shop, and their bytes count on the garden's own counters."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta

import pytest

from kswifi.agent.actions import DeleteSession, MapAddress, RemovePeer, UnmapAddress, apply_actions
from kswifi.agent.desired import DesiredTracker, desired_from_state
from kswifi.agent.drivers import nfnetlink
from kswifi.agent.drivers.nftables import NftConfig, reading_from, render_skeleton
from kswifi.agent.firewall import FirewallPolicy, Garden
from kswifi.agent.garden_redirect import GardenRedirect
from kswifi.agent.model import ActualState
from kswifi.agent.reconcile import diff
from kswifi.protocol import GardenSpec, PeerSpec
from tests.agent.test_reconcile import NOW, converge, desired_state, key, spec

SPEC = GardenSpec(
    allow=["198.51.100.3/32", "2001:db8:2::3/128"],
    dns=["192.0.2.53", "2001:db8::53"],
    redirect_url="https://shop.example.net/plans",
    rate_kbit=256,
)


class TestProtocol:
    def test_a_garden_peer_carries_no_session_limits(self) -> None:
        with pytest.raises(ValueError, match="no quota, speed or expiry"):
            PeerSpec(
                public_key=key(2), preshared_key=key(100), allowed_ips=["100.64.0.2/32"],
                quota_bytes=10,
            )  # fmt: skip
        with pytest.raises(ValueError, match="speed_mbps is positive"):
            PeerSpec(
                public_key=key(2), preshared_key=key(100), allowed_ips=["100.64.0.2/32"],
                session_id="s1", quota_bytes=10,
            )  # fmt: skip

    @pytest.mark.parametrize(
        "change",
        [{"allow": ["not-a-network"]}, {"dns": ["resolver.example"]}, {"redirect_url": "ftp://x"}],
    )
    def test_a_malformed_garden_is_refused(self, change: dict[str, object]) -> None:
        with pytest.raises(ValueError):
            GardenSpec.model_validate({**SPEC.model_dump(), **change})


class TestDesiredView:
    def test_a_garden_peer_is_a_peer_without_session_objects(self) -> None:
        state = desired_state(spec(2), spec(3, session=None))
        desired = desired_from_state(state, NOW)
        assert set(desired.peers) == {key(2), key(3)}
        assert desired.peers[key(3)].session_id is None
        assert set(desired.sessions) == {"s1"}
        assert set(desired.addresses) == {"100.64.0.2", "fd00::2"}

    def test_a_session_ending_moves_the_peer_to_the_garden_without_removing_it(self) -> None:
        paying = desired_state(spec(2))
        actual = converge(paying, ActualState(interface=None))
        assert set(actual.addresses) == {"100.64.0.2", "fd00::2"}
        garden = desired_state(spec(2, session=None), revision=2)
        tracker = DesiredTracker()
        tracker.rebuild(paying, NOW)
        scope = tracker.update(garden, NOW)
        actions = diff(tracker.desired, actual, scope)
        assert not any(isinstance(a, RemovePeer) for a in actions)  # same keys, no new code
        assert {a.address for a in actions if isinstance(a, UnmapAddress)} == {
            "100.64.0.2",
            "fd00::2",
        }
        assert tracker.desired == desired_from_state(garden, NOW)
        actual = apply_actions(actual, actions)
        # The next pass deletes the session's objects once nothing maps to them.
        follow = diff(tracker.desired, actual)
        assert follow == [DeleteSession("s1")]
        actual = apply_actions(actual, follow)
        assert key(2) in actual.peers and not actual.addresses and not actual.sessions

        # A purchase: the same peer draws from the new session (its addresses map again).
        bought = desired_state(spec(2, session="s2"), revision=3)
        scope = tracker.update(bought, NOW)
        actions = diff(tracker.desired, actual, scope)
        assert {(a.address, a.session_id) for a in actions if isinstance(a, MapAddress)} == {
            ("100.64.0.2", "s2"),
            ("fd00::2", "s2"),
        }
        assert not any(isinstance(a, RemovePeer) for a in actions)

    def test_an_expired_session_is_cut_until_the_control_plane_moves_it(self) -> None:
        state = desired_state(spec(2, expires_at=NOW - timedelta(seconds=1)))
        assert key(2) in desired_from_state(state, NOW).expired_peers


class TestFirewall:
    def rules(self, garden: Garden | None) -> list[str]:
        policy = FirewallPolicy().with_garden(garden)
        return render_skeleton(NftConfig("kswifi0", "eth0", policy=policy))

    def test_without_a_garden_a_peer_without_session_is_dropped(self) -> None:
        lines = self.rules(None)
        assert "add rule inet kswifi garden_up drop" in lines
        assert "add rule inet kswifi garden_down drop" in lines
        assert not any("redirect to" in line for line in lines)

    def test_the_garden_reaches_dns_and_the_app_and_redirects_plain_http(self) -> None:
        lines = self.rules(Garden.from_spec(SPEC, 28080))
        t = "add rule inet kswifi"
        # Unmapped addresses (no session) leave the accounting chains for the garden.
        assert f"{t} upload goto garden_up" in lines
        assert f"{t} to_peer goto garden_down" in lines
        assert (
            f"{t} garden_up ip daddr @garden_dns4 meta l4proto {{ tcp, udp }} th dport 53"
            " counter name garden_up accept"
        ) in lines
        assert f"{t} garden_up ip6 daddr @garden_allow6 counter name garden_up accept" in lines
        up = [line for line in lines if line.startswith(f"{t} garden_up ")]
        assert up[-1] == f"{t} garden_up jump refuse"  # everything else: refused at once
        assert (
            f'{t} garden_redirect iifname "kswifi0" ip saddr != @quota4'
            " ip daddr != @garden_allow4 tcp dport 80 redirect to :28080"
        ) in lines
        accept = f"{t} to_gateway ct status dnat tcp dport 28080 accept"
        assert lines.index(accept) < lines.index(f"{t} to_gateway jump refuse")
        assert "add element inet kswifi garden_allow4 { 198.51.100.3/32 }" in lines
        assert "add element inet kswifi garden_dns6 { 2001:db8::53/128 }" in lines
        assert "add counter inet kswifi garden_up" in lines

    def test_garden_counters_are_read_apart_from_the_sessions(self) -> None:
        reading = reading_from(
            [
                nfnetlink.ObjectEntry("garden_up", False, 7, 1200),
                nfnetlink.ObjectEntry("garden_dn", False, 8, 3400),
                nfnetlink.ObjectEntry("up-s1", False, 9, 50),
            ]
        )
        assert reading.garden == (1200, 3400)
        assert set(reading.counters) == {("s1", "up")}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_plain_http_of_the_garden_is_redirected_to_the_shop() -> None:
    unused_tcp_port = _free_port()
    redirect = GardenRedirect()
    await redirect.serve(["127.0.0.1/8"], unused_tcp_port, SPEC.redirect_url)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        writer.write(b"GET /anything HTTP/1.1\r\nHost: news.example\r\n\r\n")
        await writer.drain()
        answer = (await asyncio.wait_for(reader.read(), 5)).decode()
        writer.close()
        assert answer.startswith("HTTP/1.1 302 Found\r\n")
        assert "\r\nLocation: https://shop.example.net/plans\r\n" in answer
        assert "Buy more data" in answer
        # Serving again with the same arguments keeps the listener; a new URL is used at once.
        await redirect.serve(["127.0.0.1/8"], unused_tcp_port, "https://shop.example.net/x")
        reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        writer.write(b"HEAD / HTTP/1.1\r\n\r\n")
        answer = (await asyncio.wait_for(reader.read(), 5)).decode()
        writer.close()
        assert "Location: https://shop.example.net/x\r\n" in answer
    finally:
        await redirect.close()
