"""What a phone may reach through the gateway: the Internet, and nothing else.

Forwarding from the tunnel refuses every destination that is not global (the ranges below),
the networks the operator adds, and the WAN interface's on-link networks (the provider's
network: neighbours, routers, other tenants). Networks the operator allows back are checked
first. Addresses of the gateway itself are never forwarded to (the kernel delivers them
locally); the input chain answers phones only with replies and echo (see `nftables`).

A phone without a session (no quota of its own: the walled garden, see `Garden`) reaches only
DNS at its resolvers and the KSWiFi app; its other plain-HTTP requests are redirected to the
shop and everything else is refused at once.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from kswifi.agent.drivers.command import Runner
from kswifi.agent.errors import CommandError, DriverError
from kswifi.protocol import GardenSpec

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

NON_GLOBAL_V4 = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
)
NON_GLOBAL_V6 = (
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "64:ff9b:1::/48",
    "100::/64",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
)
DEFAULT_BLOCKED_PORTS = ("tcp/25",)
"""Outbound SMTP: closed so that no phone sends spam from the gateway's address."""
DEFAULT_MAX_CONNECTIONS = 4096
ECHO_PER_SECOND = 20
"""ICMP echo the gateway's tunnel addresses answer, per second for all phones together."""

_PROTOCOLS = ("tcp", "udp")


def parse_network(text: str) -> Network:
    """A network (or one address) as an operator writes it: `10.1.0.0/16`, `2001:db8::/32`."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"not an IP network: {text.strip()!r} (e.g. 10.1.0.0/16)") from None


def parse_port(text: str) -> tuple[str, int]:
    """`25` (TCP) or `tcp/25` / `udp/137` -> (protocol, port)."""
    value = text.strip().lower()
    protocol, _, port = value.rpartition("/")
    protocol = protocol or "tcp"
    if protocol not in _PROTOCOLS or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"not a port: {text.strip()!r} (e.g. 25, tcp/25 or udp/137)")
    return protocol, int(port)


def collapse(networks: Iterable[Network], version: int) -> list[str]:
    """The networks of one IP version, overlaps merged (nftables interval sets refuse them)."""
    if version == 4:
        v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
        return [str(n) for n in ipaddress.collapse_addresses(v4)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    return [str(n) for n in ipaddress.collapse_addresses(v6)]


@dataclass(frozen=True)
class Garden:
    """The walled garden of peers without a session, as the control plane describes it (the
    redirect port is the agent's own setting)."""

    allow: tuple[Network, ...] = ()
    dns: tuple[Network, ...] = ()
    redirect_url: str = ""
    redirect_port: int = 0
    rate_kbit: int = 256

    @classmethod
    def from_spec(cls, spec: GardenSpec, redirect_port: int) -> Garden:
        return cls(
            allow=tuple(parse_network(n) for n in spec.allow),
            dns=tuple(parse_network(a) for a in spec.dns),
            redirect_url=spec.redirect_url,
            redirect_port=redirect_port,
            rate_kbit=spec.rate_kbit,
        )

    def allow_v(self, version: int) -> list[str]:
        return collapse(self.allow, version)

    def dns_v(self, version: int) -> list[str]:
        return collapse(self.dns, version)


@dataclass(frozen=True)
class FirewallPolicy:
    """The gateway's forwarding policy, rendered into the nftables skeleton."""

    blocked: tuple[Network, ...] = tuple(parse_network(n) for n in NON_GLOBAL_V4 + NON_GLOBAL_V6)
    """The non-global ranges and the operator's networks."""
    onlink: tuple[Network, ...] = ()
    """The WAN interface's on-link networks, as last read from the kernel."""
    allowed: tuple[Network, ...] = ()
    blocked_ports: tuple[tuple[str, int], ...] = tuple(parse_port(p) for p in DEFAULT_BLOCKED_PORTS)
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    echo_per_second: int = ECHO_PER_SECOND
    garden: Garden | None = None
    """None: traffic of a peer without a session is dropped (a control plane before gardens)."""

    @classmethod
    def build(
        cls,
        extra_blocked: Sequence[str] = (),
        allowed: Sequence[str] = (),
        blocked_ports: Sequence[str] = DEFAULT_BLOCKED_PORTS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> FirewallPolicy:
        """The default non-global ranges plus the operator's networks; `allowed` networks
        are let through before any blocked one."""
        blocked = (*NON_GLOBAL_V4, *NON_GLOBAL_V6, *extra_blocked)
        return cls(
            blocked=tuple(parse_network(n) for n in blocked),
            allowed=tuple(parse_network(n) for n in allowed),
            blocked_ports=tuple(sorted({parse_port(p) for p in blocked_ports})),
            max_connections=max_connections,
        )

    def with_onlink(self, onlink: Iterable[Network]) -> FirewallPolicy:
        return replace(self, onlink=tuple(onlink))

    def with_garden(self, garden: Garden | None) -> FirewallPolicy:
        return replace(self, garden=garden)

    def blocked_v4(self) -> list[str]:
        return collapse((*self.blocked, *self.onlink), 4)

    def blocked_v6(self) -> list[str]:
        return collapse((*self.blocked, *self.onlink), 6)

    def allowed_v4(self) -> list[str]:
        return collapse(self.allowed, 4)

    def allowed_v6(self) -> list[str]:
        return collapse(self.allowed, 6)

    def refuses(self, address: str) -> bool:
        """Whether forwarding to `address` is refused (the rule the kernel applies)."""
        ip = ipaddress.ip_address(address)
        if any(ip in network for network in self.allowed):
            return False
        return any(ip in network for network in (*self.blocked, *self.onlink))


def onlink_networks(runner: Runner, wan_interface: str) -> list[Network]:
    """The WAN interface's on-link networks: every route on it without a gateway (its
    addresses' prefixes and any static on-link route), default routes aside."""
    networks: list[Network] = []
    for family in ("-4", "-6"):
        try:
            out = runner(["ip", "-j", family, "route", "show", "dev", wan_interface])
        except CommandError as exc:
            raise DriverError(f"cannot read the routes of {wan_interface}: {exc.stderr}") from exc
        for route in json.loads(out or "[]"):
            destination = route.get("dst", "")
            if route.get("gateway") or route.get("via") or destination in ("", "default"):
                continue
            if route.get("type", "unicast") != "unicast":
                continue
            try:
                networks.append(ipaddress.ip_network(destination, strict=False))
            except ValueError:
                continue
    return networks
