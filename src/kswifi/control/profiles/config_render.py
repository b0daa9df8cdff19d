"""The wg-quick config of a Connect Profile: a pure renderer and a strict parser.

The text goes into a QR code and into the WireGuard apps as is, so it carries no comment
lines (the apps drop them and they only make the code denser).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from kswifi.control.profiles.keys import WireguardKey

DEFAULT_ALLOWED_IPS: tuple[str, ...] = ("0.0.0.0/0", "::/0")
DEFAULT_KEEPALIVE_SECONDS = 25
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


def parse_dns_servers(value: str) -> tuple[str, ...]:
    """`"1.1.1.1, 2606:4700:4700::1111"` (as stored on a region) → normalised addresses."""
    servers = tuple(
        str(ipaddress.ip_address(part)) for part in re.split(r"[,\s]+", value.strip()) if part
    )
    if not servers:
        raise ValueError("a region needs at least one DNS server")
    return servers


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); ValueError for anything else."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", endpoint)
    if match is None:
        raise ValueError(f"endpoint must be HOST:PORT, got {endpoint!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise ValueError("endpoint port must be 1-65535")
    if match.group(1):
        ipaddress.IPv6Address(host)
    elif not _HOSTNAME.match(host):
        raise ValueError(f"endpoint host {host!r} is not a hostname or address")
    return host, port


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything a phone needs to reach its gateway."""

    private_key: WireguardKey
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address
    dns_servers: tuple[str, ...]
    mtu: int
    peer_public_key: WireguardKey
    preshared_key: WireguardKey
    endpoint: str
    allowed_ips: tuple[str, ...] = DEFAULT_ALLOWED_IPS
    persistent_keepalive: int = DEFAULT_KEEPALIVE_SECONDS

    def __post_init__(self) -> None:
        if not 576 <= self.mtu <= 65535:
            raise ValueError("MTU out of range")
        if not self.dns_servers:
            raise ValueError("at least one DNS server")
        split_endpoint(self.endpoint)


def render_config(config: ClientConfig) -> str:
    """The wg-quick text, `\\n` line endings, ending with a newline."""
    lines = [
        "[Interface]",
        f"PrivateKey = {config.private_key}",
        f"Address = {config.ipv4}/32, {config.ipv6}/128",
        f"DNS = {', '.join(config.dns_servers)}",
        f"MTU = {config.mtu}",
        "",
        "[Peer]",
        f"PublicKey = {config.peer_public_key}",
        f"PresharedKey = {config.preshared_key}",
        f"Endpoint = {config.endpoint}",
        f"AllowedIPs = {', '.join(config.allowed_ips)}",
        f"PersistentKeepalive = {config.persistent_keepalive}",
    ]
    return "\n".join(lines) + "\n"


_REQUIRED = {
    "Interface": ("PrivateKey", "Address", "DNS", "MTU"),
    "Peer": ("PublicKey", "PresharedKey", "Endpoint", "AllowedIPs", "PersistentKeepalive"),
}


def parse_config(text: str) -> ClientConfig:
    """Read a config this module rendered (one [Interface], one [Peer]); ValueError otherwise."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip()
            if name not in _REQUIRED or name in sections:
                raise ValueError(f"line {number}: unexpected section [{name}]")
            current = sections[name] = {}
            continue
        if current is None or "=" not in line:
            raise ValueError(f"line {number}: expected `Key = value` inside a section")
        key, value = (part.strip() for part in line.split("=", 1))
        if key in current:
            raise ValueError(f"line {number}: {key} given twice")
        current[key] = value
    for name, keys in _REQUIRED.items():
        section = sections.get(name)
        if section is None:
            raise ValueError(f"missing [{name}] section")
        missing = [key for key in keys if key not in section]
        unknown = sorted(set(section) - set(keys))
        if missing or unknown:
            raise ValueError(f"[{name}]: missing {missing}, unknown {unknown}")
    interface, peer = sections["Interface"], sections["Peer"]
    ipv4, ipv6 = _parse_addresses(interface["Address"])
    return ClientConfig(
        private_key=WireguardKey.from_base64(interface["PrivateKey"]),
        ipv4=ipv4,
        ipv6=ipv6,
        dns_servers=parse_dns_servers(interface["DNS"]),
        mtu=int(interface["MTU"]),
        peer_public_key=WireguardKey.from_base64(peer["PublicKey"]),
        preshared_key=WireguardKey.from_base64(peer["PresharedKey"]),
        endpoint=peer["Endpoint"],
        allowed_ips=tuple(_split_list(peer["AllowedIPs"])),
        persistent_keepalive=int(peer["PersistentKeepalive"]),
    )


def _split_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _parse_addresses(value: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv6Address]:
    ipv4: ipaddress.IPv4Address | None = None
    ipv6: ipaddress.IPv6Address | None = None
    for part in _split_list(value):
        interface = ipaddress.ip_interface(part)
        if interface.network.prefixlen != interface.max_prefixlen:
            raise ValueError(f"Address {part} is not a single host")
        if isinstance(interface, ipaddress.IPv4Interface) and ipv4 is None:
            ipv4 = interface.ip
        elif isinstance(interface, ipaddress.IPv6Interface) and ipv6 is None:
            ipv6 = interface.ip
        else:
            raise ValueError("Address holds one IPv4 and one IPv6 host")
    if ipv4 is None or ipv6 is None:
        raise ValueError("Address holds one IPv4 and one IPv6 host")
    return ipv4, ipv6
