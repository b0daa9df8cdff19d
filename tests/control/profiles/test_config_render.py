"""The wg-quick config: exact text, round trip through the parser, and wg-quick's own reading."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kswifi.control.profiles.config_render import (
    ClientConfig,
    parse_config,
    parse_dns_servers,
    render_config,
    split_endpoint,
)
from kswifi.control.profiles.keys import WireguardKey, generate_keypair, generate_preshared_key

WG_QUICK = shutil.which("wg-quick")
KEY_A = WireguardKey(bytes(range(32)))
KEY_B = WireguardKey(bytes(range(32, 64)))
KEY_C = WireguardKey(bytes(range(64, 96)))


def sample(**changes: object) -> ClientConfig:
    values: dict[str, object] = {
        "private_key": KEY_A,
        "ipv4": ipaddress.IPv4Address("100.64.0.2"),
        "ipv6": ipaddress.IPv6Address("fd4b:5357:4946::2"),
        "dns_servers": ("1.1.1.1", "2606:4700:4700::1111"),
        "mtu": 1280,
        "peer_public_key": KEY_B,
        "preshared_key": KEY_C,
        "endpoint": "gw1.example.net:51820",
    }
    values.update(changes)
    return ClientConfig(**values)  # type: ignore[arg-type]


class TestRender:
    def test_exact_text(self) -> None:
        assert render_config(sample()) == (
            "[Interface]\n"
            f"PrivateKey = {KEY_A}\n"
            "Address = 100.64.0.2/32, fd4b:5357:4946::2/128\n"
            "DNS = 1.1.1.1, 2606:4700:4700::1111\n"
            "MTU = 1280\n"
            "\n"
            "[Peer]\n"
            f"PublicKey = {KEY_B}\n"
            f"PresharedKey = {KEY_C}\n"
            "Endpoint = gw1.example.net:51820\n"
            "AllowedIPs = 0.0.0.0/0, ::/0\n"
            "PersistentKeepalive = 25\n"
        )

    def test_no_comment_lines(self) -> None:
        assert "#" not in render_config(sample())

    def test_bad_values_refused(self) -> None:
        with pytest.raises(ValueError):
            sample(endpoint="no-port")
        with pytest.raises(ValueError):
            sample(dns_servers=())
        with pytest.raises(ValueError):
            sample(mtu=10)


class TestHelpers:
    def test_dns_servers_are_normalised(self) -> None:
        assert parse_dns_servers(" 1.1.1.1,2606:4700:4700:0::1111 ") == (
            "1.1.1.1",
            "2606:4700:4700::1111",
        )

    @pytest.mark.parametrize("value", ["", "  ", "dns.example", "1.1.1.1, nope"])
    def test_dns_servers_refused(self, value: str) -> None:
        with pytest.raises(ValueError):
            parse_dns_servers(value)

    @pytest.mark.parametrize(
        ("endpoint", "expected"),
        [
            ("203.0.113.5:51820", ("203.0.113.5", 51820)),
            ("[2001:db8::1]:443", ("2001:db8::1", 443)),
            ("gw.example.net:1", ("gw.example.net", 1)),
        ],
    )
    def test_endpoints(self, endpoint: str, expected: tuple[str, int]) -> None:
        assert split_endpoint(endpoint) == expected

    @pytest.mark.parametrize(
        "endpoint", ["gw", "gw:0", "gw:70000", "2001:db8::1:51820", "[zz]:1", "a b:1", ""]
    )
    def test_bad_endpoints(self, endpoint: str) -> None:
        with pytest.raises(ValueError):
            split_endpoint(endpoint)


class TestParse:
    def test_rejects_missing_and_unknown_keys(self) -> None:
        text = render_config(sample())
        with pytest.raises(ValueError, match="missing"):
            parse_config(text.replace("MTU = 1280\n", ""))
        with pytest.raises(ValueError, match="unknown"):
            parse_config(text.replace("MTU = 1280\n", "MTU = 1280\nTable = off\n"))
        with pytest.raises(ValueError):
            parse_config("PrivateKey = x\n")
        with pytest.raises(ValueError):
            parse_config(text + "[Peer]\n")


hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9](\.[a-z][a-z0-9]{0,10}){1,3}", fullmatch=True),
)
endpoints = st.one_of(
    st.tuples(hosts, st.integers(1, 65535)).map(lambda hp: f"{hp[0]}:{hp[1]}"),
    st.tuples(st.ip_addresses(v=6), st.integers(1, 65535)).map(lambda hp: f"[{hp[0]}]:{hp[1]}"),
)
keys = st.binary(min_size=32, max_size=32).map(WireguardKey)
configs = st.builds(
    ClientConfig,
    private_key=keys,
    ipv4=st.ip_addresses(v=4),
    ipv6=st.ip_addresses(v=6),
    dns_servers=st.lists(st.ip_addresses().map(str), min_size=1, max_size=4).map(tuple),
    mtu=st.integers(1280, 1500),
    peer_public_key=keys,
    preshared_key=keys,
    endpoint=endpoints,
)


@given(configs)
def test_render_then_parse_gives_the_same_values(config: ClientConfig) -> None:
    assert parse_config(render_config(config)) == config


@pytest.mark.skipif(WG_QUICK is None, reason="wireguard-tools (wg-quick) not installed")
def test_wg_quick_strip_accepts_it(tmp_path: Path) -> None:
    pair = generate_keypair()
    config = sample(
        private_key=pair.private_key,
        peer_public_key=generate_keypair().public_key,
        preshared_key=generate_preshared_key(),
    )
    path = tmp_path / "kswifi0.conf"
    path.write_text(render_config(config))
    path.chmod(0o600)
    result = subprocess.run(
        [str(WG_QUICK), "strip", str(path)], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 0, result.stderr
    stripped = result.stdout
    assert "Address" not in stripped and "DNS" not in stripped and "MTU" not in stripped
    assert f"PrivateKey = {pair.private_key}" in stripped
    assert "AllowedIPs = 0.0.0.0/0, ::/0" in stripped
