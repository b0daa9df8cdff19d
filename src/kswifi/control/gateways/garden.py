"""The walled garden a gateway keeps for devices without a usable session: what they may still
reach (DNS at their resolvers, the KSWiFi app's own addresses and the operator's networks),
the page other plain-HTTP requests are sent to, and the shared rate. Part of every desired
state; the agent enforces it in the kernel (see `kswifi.agent.firewall`)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from urllib.parse import urlsplit

from kswifi.control.config import Settings
from kswifi.logs import get_logger
from kswifi.protocol import GardenSpec

log = get_logger("kswifi.control.gateways")

FALLBACK_DNS = ("1.1.1.1", "2606:4700:4700::1111")
"""Resolvers of a region that names none (in profiles and in the garden alike)."""
BUY_PATH = "/plans"
_RESOLVE_TTL = 300.0
_FAILED_TTL = 60.0
_resolved: dict[str, tuple[float, tuple[str, ...]]] = {}  # host -> (good until, addresses)


def allow_networks(text: str) -> list[str]:
    """`KSWIFI_WALLED_GARDEN_ALLOW`: comma-separated networks (or addresses)."""
    return [
        str(ipaddress.ip_network(item.strip(), strict=False))
        for item in text.split(",")
        if item.strip()
    ]


async def app_addresses(public_url: str) -> tuple[str, ...]:
    """The addresses of `KSWIFI_PUBLIC_URL`'s host (looked up at most every five minutes; a
    failed lookup keeps the last answer and is tried again a minute later)."""
    host = urlsplit(public_url).hostname or ""
    try:
        return (str(ipaddress.ip_address(host)),)
    except ValueError:
        pass
    cached = _resolved.get(host)
    if cached is not None and time.monotonic() < cached[0]:
        return cached[1]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        log.warning("garden_lookup_failed", host=host, error=str(exc))
        kept = cached[1] if cached is not None else ()
        _resolved[host] = (time.monotonic() + _FAILED_TTL, kept)  # asked again in a minute
        return kept
    addresses = tuple(sorted({str(info[4][0]) for info in infos}))
    _resolved[host] = (time.monotonic() + _RESOLVE_TTL, addresses)
    return addresses


async def garden_spec(settings: Settings, dns_servers: list[str]) -> GardenSpec:
    """The garden of a gateway whose region's resolvers are `dns_servers`."""
    dns = [server for server in dns_servers if _is_address(server)] or list(FALLBACK_DNS)
    allow = [
        str(ipaddress.ip_network(address)) for address in await app_addresses(settings.public_url)
    ]
    allow += [n for n in allow_networks(settings.walled_garden_allow) if n not in allow]
    return GardenSpec(
        allow=allow,
        dns=dns,
        redirect_url=settings.public_url.rstrip("/") + BUY_PATH,
        rate_kbit=settings.walled_garden_kbit,
    )


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
