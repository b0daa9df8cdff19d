"""Fixtures for the agent tests: the namespace lab and a gateway/phone/Internet topology."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kswifi.agent.dataplane import KernelDataplane
from kswifi.agent.drivers.command import CommandRunner
from kswifi.agent.drivers.loop import DownloadLoop, loop_names
from kswifi.agent.drivers.nftables import NftConfig, NftTable
from kswifi.agent.drivers.tc import TcShaper
from kswifi.agent.drivers.wireguard import WireguardInterface
from kswifi.agent.keys import generate_private_key, public_key_of

from .netlab import (
    SERVER_V4,
    Lab,
    gateway_wan,
    import_wg_quick,
    provider_network,
    root_skip_reason,
)

TRAFFIC = Path(__file__).with_name("traffic.py")
GATEWAY_PORT = 51820
GATEWAY_WAN_V4 = "192.0.2.1"
GATEWAY_WAN_V6 = "2001:db8:1::1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = None
    for item in items:
        if item.get_closest_marker("root") is None:
            continue
        if reason is None:
            reason = root_skip_reason() or ""
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = root_skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab()
    try:
        yield lab
    finally:
        lab.cleanup()


def random_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Phone:
    ns: str
    ifname: str
    private_key: str
    address_v4: str
    address_v6: str
    preshared_key: str = field(
        default_factory=lambda: base64.b64encode(secrets.token_bytes(32)).decode()
    )

    @property
    def public_key(self) -> str:
        return public_key_of(self.private_key)

    @property
    def allowed_ips(self) -> list[str]:
        return [f"{self.address_v4}/32", f"{self.address_v6}/128"]


@dataclass
class Topology:
    """inet (provider's router; servers 198.51.100.2, 2001:db8:2::2 behind it) <-WAN- gateway
    -veth per phone- phone namespaces."""

    lab: Lab
    gw: str
    inet: str
    wg: str
    ifb: str
    wan: str
    gateway_private_key: str = field(default_factory=generate_private_key)
    phones: list[Phone] = field(default_factory=list)

    @property
    def download(self) -> str:
        """The device that shapes downloads (the download loop's entry)."""
        return loop_names(self.wg)[0]

    @property
    def gateway_public_key(self) -> str:
        return public_key_of(self.gateway_private_key)

    def runner(self) -> CommandRunner:
        return CommandRunner(netns=self.gw, timeout_s=30)

    def dataplane(self) -> KernelDataplane:
        runner = self.runner()
        return KernelDataplane(
            runner=runner,
            wireguard=WireguardInterface(runner, self.wg, userspace_only=True),
            nft=NftTable(runner, NftConfig(self.wg, self.wan)),
            tc=TcShaper(runner, self.wg, self.ifb),
            loop=DownloadLoop(runner, self.wan, self.wg),
        )

    def new_phone(self) -> Phone:
        """Keys and addresses for a phone (its namespace comes up in `connect`)."""
        index = len(self.phones)
        phone = Phone(
            ns="",
            ifname=self.lab.ifname(f"w{index}"),
            private_key=generate_private_key(),
            address_v4=f"100.64.0.{10 + index}",
            address_v6=f"fd6b:7377:6966::{10 + index:x}",
        )
        self.phones.append(phone)
        return phone

    def connect(self, phone: Phone) -> None:
        """Namespace + veth for the phone, then its tunnel from a wg-quick config."""
        index = self.phones.index(phone)
        ns = self.lab.netns(f"ph{index}")
        base = 4 * index
        self.lab.veth(
            self.gw,
            self.lab.ifname(f"g{index}"),
            f"203.0.113.{base + 1}/30",
            ns,
            self.lab.ifname(f"p{index}"),
            f"203.0.113.{base + 2}/30",
        )
        phone.ns = ns
        import_wg_quick(self.lab, ns, phone.ifname, self.wg_quick(phone, f"203.0.113.{base + 1}"))

    def wg_quick(self, phone: Phone, endpoint: str) -> str:
        return "\n".join(
            [
                "[Interface]",
                f"PrivateKey = {phone.private_key}",
                f"Address = {phone.address_v4}/32, {phone.address_v6}/128",
                "MTU = 1420",
                "",
                "[Peer]",
                f"PublicKey = {self.gateway_public_key}",
                f"PresharedKey = {phone.preshared_key}",
                f"Endpoint = {endpoint}:{GATEWAY_PORT}",
                "AllowedIPs = 0.0.0.0/0, ::/0",
                "PersistentKeepalive = 25",
                "",
            ]
        )

    def serve(self, port: int = 8000, host: str = SERVER_V4) -> None:
        process = self.lab.popen(
            self.inet,
            ["python3", str(TRAFFIC), "serve", host, str(port)],
            stdout=-1,
        )
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"ready"

    def traffic(self, phone: Phone, *args: str, timeout: float = 60) -> dict[str, float]:
        out = self.lab.python(phone.ns, TRAFFIC, *args, timeout=timeout)
        result: dict[str, float] = json.loads(out)
        return result


@pytest.fixture
def topology(lab: Lab) -> Topology:
    gw = lab.netns("gw")
    inet = lab.netns("inet")
    wan = lab.ifname("wan")
    net = lab.ifname("net")
    lab.link(gw, wan, inet, net)
    provider_network(lab, inet, net)
    gateway_wan(lab, gw, wan, GATEWAY_WAN_V4, GATEWAY_WAN_V6)
    return Topology(lab=lab, gw=gw, inet=inet, wg=lab.ifname("gw"), ifb=lab.ifname("ifb"), wan=wan)
