"""Host addresses as text, fast: a full reconcile at 50,000 profiles handles 100,000 of them,
and `ipaddress` costs tens of microseconds each where the C library's `inet_pton`/`inet_ntop`
cost one. The answers are `ipaddress`'s (property-tested); anything but a bare host address or
a host route (`/32`, `/128`) goes to `ipaddress` itself."""

from __future__ import annotations

import ipaddress
import socket

_HOST_PREFIX = {socket.AF_INET: "32", socket.AF_INET6: "128"}


def _canonical(host: str) -> tuple[str, socket.AddressFamily] | None:
    """`host` in canonical text and its family, or None when only `ipaddress` can say."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        text = socket.inet_ntop(family, socket.inet_pton(family, host))
    except (OSError, ValueError):
        return None
    if "." in text and family == socket.AF_INET6:
        return None  # an embedded IPv4 part: `ipaddress` writes it in hex
    return text, family


def canonical_host(value: str) -> str:
    """The host address of `value` in canonical text (`100.64.0.2/32` and `100.64.0.2` both
    give `100.64.0.2`); ValueError when it is none."""
    host, _, prefix = value.partition("/")
    found = _canonical(host)
    if found is not None and prefix in ("", _HOST_PREFIX[found[1]]):
        return found[0]
    return str(ipaddress.ip_interface(value).ip)


def host_cidr(address: str) -> str:
    """`100.64.0.2` -> `100.64.0.2/32`; networks keep their prefix (`ipaddress`'s text)."""
    found = _canonical(address) if "/" not in address else None
    if found is not None and found[0] == address:
        return f"{address}/{_HOST_PREFIX[found[1]]}"
    return str(ipaddress.ip_network(address, strict=False))


def normalize_allowed_ip(cidr: str) -> str:
    """Host routes as bare addresses (the reconcile key), anything wider as a network: what
    `host_cidr` wrote, read back (`100.64.0.2/32` -> `100.64.0.2`)."""
    host, _, prefix = cidr.partition("/")
    found = _canonical(host)
    if found is not None and prefix == _HOST_PREFIX[found[1]]:
        return found[0]
    network = ipaddress.ip_network(cidr, strict=False)
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)
