"""Placement: which gateway takes a new device (rank and choice; `service.place` decides the
region)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from kswifi.control.config import Settings
from kswifi.control.errors import ServiceUnavailable
from kswifi.control.gateways import service as gateways
from kswifi.control.models import (
    Gateway,
)


class NoGatewayAvailable(ServiceUnavailable):
    """No enabled gateway with free capacity (in the asked region)."""

    code = "no_gateway_available"


def placement_rank(
    gateway: Gateway, load: int, now: datetime, settings: Settings | None
) -> tuple[int, float] | None:
    """(tier, share of capacity used) of a gateway that can take a device, lower is better:
    tier 0 online, 1 never seen yet; None when it is full or known to be offline."""
    if load >= gateway.capacity:
        return None
    if settings is not None:
        online = gateways.seen_recently(gateway, now, settings)
    else:
        online = gateway.is_online and gateway.last_heartbeat_at is not None
    if online:
        return (0, load / gateway.capacity)
    if gateway.last_heartbeat_at is None:
        return (1, load / gateway.capacity)
    return None


def pick_gateway(
    candidates: Iterable[tuple[Gateway, int]],
    *,
    now: datetime,
    settings: Settings | None,
    where: str,
) -> Gateway:
    """The best of enabled (gateway, live devices) pairs by `placement_rank`, then by name."""
    ranked: list[tuple[int, float, str, Gateway]] = []
    for gateway, load in candidates:
        rank = placement_rank(gateway, load, now, settings)
        if rank is not None:
            ranked.append((*rank, gateway.name, gateway))
    if not ranked:
        raise NoGatewayAvailable(
            f"No gateway is available {where}: every gateway is full or offline. "
            "Try another region or try again later."
        )
    return min(ranked, key=lambda item: item[:3])[3]
