"""Business rules of the regions domain: the catalog of regions, their health, how far each is
from a client, and placing a new device in the nearest region with a healthy gateway.

Distance is counted in continents (the only thing an offline country lookup tells reliably):
0 same continent, 1 a neighbour (one ocean or sea away), 2 distant, 3 the far side of the world.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control import geoip
from kswifi.control.config import Settings
from kswifi.control.db import Database
from kswifi.control.errors import Conflict, NotFound, Unprocessable
from kswifi.control.events import EventBus, publish_after_commit, session_channel
from kswifi.control.gateways import service as gateways
from kswifi.control.gateways.schemas import GatewayOut
from kswifi.control.geoip import ClientLocation
from kswifi.control.models import Gateway, Region
from kswifi.control.regions import placement as placement_rules
from kswifi.control.regions import repository
from kswifi.control.regions.schemas import (
    AdminRegionOut,
    RegionCreate,
    RegionList,
    RegionStatus,
    RegionUpdate,
)
from kswifi.control.webhooks import service as webhooks
from kswifi.logs import get_logger

log = get_logger("kswifi.control.regions")
FAR = 3
# Symmetric; pairs not listed are FAR. Tuned to where the undersea cables run, not to maps.
_NEIGHBOURS: dict[frozenset[str], int] = {
    frozenset(("NA", "SA")): 1,
    frozenset(("NA", "EU")): 1,
    frozenset(("EU", "AF")): 1,
    frozenset(("AS", "OC")): 1,
    frozenset(("NA", "AS")): 2,
    frozenset(("NA", "OC")): 2,
    frozenset(("NA", "AF")): 2,
    frozenset(("SA", "EU")): 2,
    frozenset(("SA", "AF")): 2,
    frozenset(("AF", "AS")): 2,
    frozenset(("EU", "AS")): 2,  # London-Singapore is ~170 ms; New York is ~75 ms from London
    frozenset(("AN", "SA")): 2,
    frozenset(("AN", "OC")): 2,
}
LATENCY_HINTS = {
    0: "Same continent: 20–50 ms",
    1: "Neighbouring continent: 70–120 ms",
    2: "Distant continent: 120–200 ms",
    3: "Far side of the world: 200–300 ms",
}
UNKNOWN_LATENCY_HINT = "Test to see your latency"


class RegionNotFound(NotFound):
    code = "region_not_found"


class RegionExists(Conflict):
    code = "region_exists"


def continent_distance(a: str | None, b: str | None) -> int | None:
    """0 (same continent) to 3 (far side of the world); None when either is unknown."""
    if not a or not b:
        return None
    if a == b:
        return 0
    return _NEIGHBOURS.get(frozenset((a, b)), FAR)


def latency_hint(distance: int | None) -> str:
    """What the app shows next to a region before (or instead of) measuring."""
    if distance is None:
        return UNKNOWN_LATENCY_HINT
    return LATENCY_HINTS[min(distance, FAR)]


def dns_list(region: Region) -> list[str]:
    return [server.strip() for server in region.dns_servers.split(",") if server.strip()]


def locate_client(
    settings: Settings, *, peer_address: str | None, headers: Mapping[str, str]
) -> ClientLocation:
    """Where the caller of a request is: the trusted proxy headers when configured, else the
    connection's address, looked up in the embedded GeoIP data."""
    return geoip.locate(
        peer_address=peer_address,
        headers=dict(headers),
        address_header=settings.client_address_header,
        country_header=settings.client_country_header,
    )


def probe_url(settings: Settings, code: str) -> str:
    """Where the app times round trips to a region: the operator's per-region URL template
    (a tiny endpoint on the region's gateway host), else this server's own probe."""
    if settings.region_probe_url:
        return settings.region_probe_url.replace("{region}", code)
    return f"{settings.public_url.rstrip('/')}/api/regions/{code}/probe"


# --- the catalog (operators) -------------------------------------------------------------------


def to_admin_out(region: Region) -> AdminRegionOut:
    return AdminRegionOut(
        code=region.code,
        name=region.name,
        location=region.location,
        continent=region.continent,
        dns_servers=dns_list(region),
        is_active=region.is_active,
        created_at=region.created_at,
    )


async def get(db: AsyncSession, code: str) -> Region:
    """The region with this code, active or not; RegionNotFound (404) otherwise."""
    region = await repository.get(db, code)
    if region is None:
        raise RegionNotFound(f"No region {code!r}")
    return region


async def list_all(db: AsyncSession) -> list[Region]:
    """Every region, inactive ones included (operators)."""
    return await repository.list_all(db)


async def create(db: AsyncSession, data: RegionCreate, *, actor: str) -> Region:
    """A new region; RegionExists (409) when the code is taken. Audited."""
    if await repository.get(db, data.code) is not None:
        raise RegionExists(f"A region with code {data.code!r} already exists")
    region = Region(
        code=data.code,
        name=data.name,
        location=data.location,
        continent=data.continent,
        dns_servers=", ".join(data.dns_servers),
        is_active=data.is_active,
    )
    try:
        async with db.begin_nested():  # a concurrent create of the same code loses cleanly
            repository.add(db, region)
            await db.flush()
    except IntegrityError as exc:
        raise RegionExists(f"A region with code {data.code!r} already exists") from exc
    repository.add_audit(
        db,
        actor=actor,
        action="region.create",
        target=f"region:{region.code}",
        detail=data.model_dump_json(),
    )
    _CODES_CACHE.clear()
    return region


async def update(db: AsyncSession, code: str, changes: RegionUpdate, *, actor: str) -> Region:
    """Change a region's name, place, continent, resolvers or whether it takes new devices.
    Devices already set up keep their gateway (and the DNS of the profile they scanned)."""
    region = await get(db, code)
    given = changes.model_dump(exclude_unset=True)
    empty = sorted(name for name, value in given.items() if value is None)
    if empty:
        raise Unprocessable(f"{empty[0]}: may not be null", field=empty[0])
    before = _fields(region)
    for name, value in given.items():
        if name == "dns_servers":
            region.dns_servers = ", ".join(value)
        elif isinstance(value, str):
            setattr(region, name, value.strip())
        else:
            setattr(region, name, value)
    await db.flush()
    after = _fields(region)
    diff = {name: [before[name], after[name]] for name in after if before[name] != after[name]}
    repository.add_audit(
        db,
        actor=actor,
        action="region.update",
        target=f"region:{region.code}",
        detail=json.dumps(diff, sort_keys=True),
    )
    _CODES_CACHE.clear()
    return region


def _fields(region: Region) -> dict[str, Any]:
    return {
        "name": region.name,
        "location": region.location,
        "continent": region.continent,
        "dns_servers": dns_list(region),
        "is_active": region.is_active,
    }


# Active region codes per database, for the latency probe, which must not wait on the database
# (it measures the network). Refreshed every few seconds; an edit through this service clears
# it at once (on other replicas, within the refresh period).
_CODES_CACHE: weakref.WeakKeyDictionary[Database, tuple[float, frozenset[str]]] = (
    weakref.WeakKeyDictionary()
)
_CODES_TTL_SECONDS = 10.0


async def is_active_code(database: Database, code: str) -> bool:
    """Whether `code` is an active region; reads the database at most every few seconds."""
    cached = _CODES_CACHE.get(database)
    clock = time.monotonic()
    if cached is None or clock - cached[0] > _CODES_TTL_SECONDS:
        async with database.transaction() as db:
            cached = (clock, frozenset(await repository.codes(db)))
        _CODES_CACHE[database] = cached
    return code in cached[1]


# --- health and distance (anyone) --------------------------------------------------------------


@dataclass(frozen=True)
class RegionLoad:
    """A region's gateways summed up."""

    gateways: int = 0
    healthy_gateways: int = 0
    capacity_left: int = 0
    # (tier, load) of the best gateway that can take a device: tier 0 online, 1 never seen
    # yet (a fresh install without a running agent); None when no gateway can take one.
    best: tuple[int, float] | None = None

    @property
    def status(self) -> str:
        if self.gateways == 0:
            return "no_gateways"
        if self.healthy_gateways == 0:
            return "offline"
        return "online" if self.capacity_left > 0 else "full"


def region_loads(outs: list[GatewayOut]) -> dict[str, RegionLoad]:
    """Per region: enabled and healthy gateways, free places, and the best candidate."""
    loads: dict[str, RegionLoad] = {}
    for out in outs:
        if not out.is_enabled:
            continue
        load = loads.get(out.region, RegionLoad())
        free = max(0, out.capacity - out.active_devices)
        tier: int | None = None
        if out.is_online:
            tier = 0
        elif out.last_heartbeat_at is None:
            tier = 1
        candidate = (tier, out.active_devices / out.capacity) if tier is not None and free else None
        best = load.best
        if candidate is not None and (best is None or candidate < best):
            best = candidate
        loads[out.region] = RegionLoad(
            gateways=load.gateways + 1,
            healthy_gateways=load.healthy_gateways + int(out.is_online),
            capacity_left=load.capacity_left + (free if out.is_online else 0),
            best=best,
        )
    return loads


def rank_regions(
    regions: list[Region], loads: Mapping[str, RegionLoad], continent: str | None
) -> list[Region]:
    """Regions in the order placement tries them: nearest first, then the one whose best
    gateway is the most available (online before never-seen, then least loaded)."""

    def key(region: Region) -> tuple[int, tuple[int, float], str]:
        distance = continent_distance(continent, region.continent)
        best = loads.get(region.code, RegionLoad()).best
        return (FAR + 1 if distance is None else distance, best or (9, 9.0), region.code)

    return sorted(regions, key=key)


async def list_status(
    db: AsyncSession, settings: Settings, client: ClientLocation, now: datetime
) -> RegionList:
    """Active regions with their health and a latency hint for the caller, nearest first."""
    regions = await repository.list_all(db, active_only=True)
    loads = region_loads(await gateways.list_out(db, now, settings))
    ranked = rank_regions(regions, loads, client.continent)
    recommended = next((r.code for r in ranked if loads.get(r.code, RegionLoad()).best), None)
    statuses = []
    for region in ranked:
        load = loads.get(region.code, RegionLoad())
        distance = continent_distance(client.continent, region.continent)
        statuses.append(
            RegionStatus(
                code=region.code,
                name=region.name,
                location=region.location,
                continent=region.continent,
                status=load.status,
                online=load.healthy_gateways > 0,
                healthy_gateways=load.healthy_gateways,
                gateways=load.gateways,
                capacity_left=load.capacity_left,
                distance=distance,
                latency_hint=latency_hint(distance),
                probe_url=probe_url(settings, region.code),
                recommended=region.code == recommended,
            )
        )
    return RegionList(
        regions=statuses,
        client_country=client.country,
        client_continent=client.continent,
        recommended_region=recommended,
    )


# --- placement ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a new device goes, and why there."""

    gateway: Gateway
    region_code: str
    reason: str  # "requested", "nearest", "fallback" (nearest had no room) or "least_loaded"
    nearest_region: str | None  # the region that would have been first, when it differs
    region: Region | None = None  # the gateway's region as placement read it

    @property
    def note(self) -> str | None:
        if self.reason != "fallback" or self.nearest_region is None:
            return None
        return (
            f"Region {self.nearest_region} has no free gateway right now, "
            f"so this profile uses {self.region_code}."
        )


async def place(
    db: AsyncSession,
    *,
    region: str | None,
    client: ClientLocation,
    settings: Settings,
    now: datetime,
) -> Placement:
    """The gateway for a new device.

    An explicit region is honoured or refused (503 `no_gateway_available` when it has no
    room: the person chose it, so we do not move them silently). Otherwise: the nearest active
    region to the client with a healthy gateway that has room, least loaded first; if none,
    the next nearest; without a location, the least loaded region anywhere.
    """
    # One statement reads every active region with its enabled gateways and their loads.
    rows = await gateways.placement_candidates(db, now, region)
    if region is not None:
        if not rows:  # unknown or retired
            known = ", ".join(sorted(await repository.codes(db))) or "none"
            raise Unprocessable(f"unknown region {region!r} (regions: {known})", field="region")
        where = f"in region {region!r}"
        candidates = [(row.gateway, row.load) for row in rows if row.gateway is not None]
        if not candidates:
            raise placement_rules.NoGatewayAvailable(
                f"No gateway is available {where}: none is registered and enabled. "
                "Try another region or try again later."
            )
        gateway = placement_rules.pick_gateway(candidates, now=now, settings=settings, where=where)
        return Placement(gateway, region, "requested", None, rows[0].region)

    regions: dict[str, Region] = {}
    best: dict[str, tuple[tuple[int, float, str], Gateway]] = {}
    for row in rows:
        regions.setdefault(row.region.code, row.region)
        if row.gateway is None:
            continue
        rank = placement_rules.placement_rank(row.gateway, row.load, now, settings)
        if rank is None:
            continue
        key = (*rank, row.gateway.name)
        current = best.get(row.region.code)
        if current is None or key < current[0]:
            best[row.region.code] = (key, row.gateway)
    loads = {code: RegionLoad(best=choice[0][:2]) for code, choice in best.items()}
    ranked = rank_regions(list(regions.values()), loads, client.continent)
    nearest = ranked[0].code if ranked and client.known else None
    for candidate in ranked:
        choice = best.get(candidate.code)
        if choice is None:
            continue
        gateway = choice[1]
        if not client.known:
            return Placement(gateway, candidate.code, "least_loaded", None, candidate)
        if nearest is not None and continent_distance(
            client.continent, candidate.continent
        ) == continent_distance(client.continent, ranked[0].continent):
            return Placement(gateway, candidate.code, "nearest", None, candidate)
        return Placement(gateway, candidate.code, "fallback", nearest, candidate)
    raise placement_rules.NoGatewayAvailable(
        "No gateway is available in any region right now: every gateway is full or offline. "
        "Try again later."
    )


def gateway_usable(gateway: Gateway, now: datetime, settings: Settings) -> bool:
    """Whether a device may stay on its gateway: enabled, and online or never seen yet (a
    gateway known to have gone silent is not)."""
    if not gateway.is_enabled:
        return False
    return gateway.last_heartbeat_at is None or gateways.seen_recently(gateway, now, settings)


async def place_away_from(
    db: AsyncSession,
    current: Gateway,
    *,
    region: str | None,
    client: ClientLocation,
    settings: Settings,
    now: datetime,
) -> Placement:
    """A new gateway for a device whose gateway is offline or disabled: another gateway of
    the asked region (by default the device's own region); with no region asked and none
    left there, the nearest region that has one."""
    target = region or current.region_code
    try:
        placement = await place(db, region=target, client=client, settings=settings, now=now)
    except (
        placement_rules.NoGatewayAvailable,
        Unprocessable,
    ):  # none left there, or region retired
        if region is not None:
            raise
        placement = await place(db, region=None, client=client, settings=settings, now=now)
        return Placement(
            placement.gateway, placement.region_code, "fallback", target, placement.region
        )
    return placement


# --- gateways going offline ---------------------------------------------------------------------

GATEWAY_OFFLINE_EVENT = "gateway_offline"


def gateway_offline_message(region_name: str) -> str:
    return (
        f"The KSWiFi gateway carrying this device in {region_name} is not responding. "
        "Generate your Connect Code again (same device name) to move to another gateway; "
        "your data session and its remaining data are kept."
    )


async def mark_offline_gateways(
    db: AsyncSession, bus: EventBus, now: datetime, settings: Settings
) -> int:
    """Worker job: gateways silent for longer than the grace period go offline (each exactly
    once, whichever replica gets there first), and the usage stream of every session with a
    device on one of them gets a `gateway_offline` event once this transaction commits.
    New profiles avoid offline gateways (see `place`)."""
    claimed = await repository.claim_silent_gateways(
        db, now - timedelta(seconds=settings.offline_after_seconds)
    )
    if not claimed:
        return 0
    names = {gateway_id: (name, region) for gateway_id, name, region in claimed}
    for gateway_id, (name, region) in names.items():
        webhooks.record(
            db,
            "gateway.offline",
            {"gateway_id": gateway_id, "gateway": name, "region": region},
            now=now,
        )
    region_names = {region.code: region.name for region in await repository.list_all(db)}
    affected: dict[tuple[str, str], list[str]] = {}
    for gateway_id, session_id, device_id in await repository.active_devices_on(db, list(names)):
        if session_id is not None:  # a device in the garden has no usage stream to tell
            affected.setdefault((gateway_id, session_id), []).append(device_id)
    for (gateway_id, session_id), device_ids in affected.items():
        name, region = names[gateway_id]
        publish_after_commit(
            db,
            bus,
            session_channel(session_id),
            {
                "type": GATEWAY_OFFLINE_EVENT,
                "session_id": session_id,
                "gateway": name,
                "region": region,
                "connect_ids": device_ids,
                "message": gateway_offline_message(region_names.get(region, region)),
                "at": now.isoformat(),
            },
        )
    log.warning(
        "gateways_offline",
        gateways=[name for name, _region in names.values()],
        sessions_told=len({session_id for _gateway, session_id in affected}),
    )
    return len(claimed)
