"""Business rules of the gateways domain: registration, addresses, desired state, usage, leases
and health of the gateway agents."""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.config import Settings
from kswifi.control.errors import (
    Conflict,
    NotFound,
    Unauthorized,
    Unprocessable,
)
from kswifi.control.events import EventBus
from kswifi.control.gateways import (
    addresses,
    ipam,
    leases,
    placement_repository,
    repository,
)
from kswifi.control.gateways.schemas import GatewayOut
from kswifi.control.models import (
    Gateway,
)
from kswifi.control.security import SecretBox, hash_token, new_opaque_token
from kswifi.control.sessions import service as sessions_service
from kswifi.control.webhooks import service as webhooks
from kswifi.logs import get_logger
from kswifi.protocol import models as protocol

log = get_logger("kswifi.control.gateways")

_REGISTER_ATTEMPTS = 5
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class GatewayPublicInfo:
    """What a device's profile needs to know about its gateway."""

    gateway_id: str
    name: str
    region_code: str
    endpoint: str
    public_key: str
    dns_servers: list[str]


# --- validation -----------------------------------------------------------------------------


def normalize_endpoint(value: str) -> str:
    """`HOST:PORT` as phones dial it: a DNS name, an IPv4 address or `[IPv6]`, then a port."""
    text = value.strip()
    match = re.fullmatch(r"\[([^\]]+)\]:(\d{1,5})", text) or re.fullmatch(
        r"([^:\[\]]+):(\d{1,5})", text
    )
    if match is None:
        raise Unprocessable(
            f"endpoint {value!r} must be HOST:PORT (an IPv6 address in brackets: [addr]:port)",
            field="endpoint",
        )
    host, port_text = match.group(1), match.group(2)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise Unprocessable(f"endpoint port {port} is not between 1 and 65535", field="endpoint")
    if text.startswith("["):
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise Unprocessable(
                f"endpoint {value!r}: {host!r} is not an IPv6 address", field="endpoint"
            ) from exc
        return f"[{address}]:{port}"
    try:
        return f"{ipaddress.IPv4Address(host)}:{port}"
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if (
        len(host) > 253
        or not all(_HOSTNAME_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise Unprocessable(f"endpoint {value!r}: {host!r} is not a host name", field="endpoint")
    return f"{host.rstrip('.').lower()}:{port}"


def _endpoint_port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def _check_name(name: str) -> str:
    name = name.strip()
    if not _NAME.match(name):
        raise Unprocessable(
            "gateway name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            field="name",
        )
    return name


def _new_key_pair() -> tuple[str, str]:
    """An X25519 (WireGuard) key pair as base64: (private, public)."""
    private_key = X25519PrivateKey.generate()
    private_raw = private_key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    public_raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(private_raw).decode(), base64.b64encode(public_raw).decode()


# --- registration and the operator's view ---------------------------------------------------


async def register(
    db: AsyncSession,
    secrets: SecretBox,
    settings: Settings,
    *,
    name: str,
    region_code: str,
    endpoint: str,
    capacity: int | None = None,
    listen_port: int | None = None,
    actor: str = "cli",
) -> tuple[Gateway, str]:
    """A new gateway with its key pair, token and own address blocks; the token in clear is
    returned this once (only its hash is stored)."""
    name = _check_name(name)
    endpoint = normalize_endpoint(endpoint)
    region = await repository.get_region(db, region_code.strip())
    if region is None:
        known = ", ".join(r.code for r in await repository.list_regions(db)) or "none"
        raise Unprocessable(f"unknown region {region_code!r} (known: {known})", field="region")
    if listen_port is not None and not 1 <= listen_port <= 65535:
        raise Unprocessable("listen_port must be between 1 and 65535", field="listen_port")
    await repository.lock_registrations(db)
    if await repository.get_by_name(db, name) is not None:
        raise Conflict(f"a gateway named {name!r} already exists")

    capacity = settings.default_gateway_capacity if capacity is None else capacity
    if capacity < 1:
        raise Unprocessable("capacity must be at least 1", field="capacity")
    private_key, public_key = _new_key_pair()
    token = new_opaque_token()
    for _attempt in range(_REGISTER_ATTEMPTS):
        blocks = await addresses.carve_blocks(db, settings)
        if capacity > blocks.device_capacity:
            raise Unprocessable(
                f"capacity {capacity} is more than the gateway's address block holds"
                f" ({blocks.device_capacity} devices in {blocks.ipv4})",
                field="capacity",
            )
        gateway = Gateway(
            name=name,
            region_code=region.code,
            endpoint=endpoint,
            listen_port=listen_port or _endpoint_port(endpoint),
            token_hash=hash_token(token),
            public_key=public_key,
            private_key_encrypted=secrets.encrypt(private_key),
            ipv4_pool=str(blocks.ipv4),
            ipv6_pool=str(blocks.ipv6),
            capacity=capacity,
            next_host_index=ipam.FIRST_DEVICE_HOST_INDEX,
            revision=1,
            is_enabled=True,
            is_online=False,
        )
        try:
            async with db.begin_nested():
                db.add(gateway)
                await db.flush()
            break
        except IntegrityError:
            # A concurrent registration committed first: the same name, or the same blocks
            # (then carve again; they are taken now).
            if await repository.get_by_name(db, name) is not None:
                raise Conflict(f"a gateway named {name!r} already exists") from None
    else:
        raise Conflict("gateway address blocks are contended; try again")
    repository.add_audit(
        db,
        actor=actor,
        action="gateway.create",
        target=gateway.id,
        detail=f"name={name} region={region.code} endpoint={endpoint} ipv4={blocks.ipv4}"
        f" ipv6={blocks.ipv6} capacity={capacity}",
    )
    log.info("gateway_registered", gateway_id=gateway.id, name=name, region=region.code)
    return gateway, token


async def rotate_token(db: AsyncSession, gateway_id: str, *, actor: str) -> tuple[Gateway, str]:
    """A new token for the gateway; the old one stops working at once."""
    gateway = await get(db, gateway_id)
    token = new_opaque_token()
    gateway.token_hash = hash_token(token)
    repository.add_audit(
        db, actor=actor, action="gateway.rotate_token", target=gateway.id, detail=""
    )
    return gateway, token


async def set_endpoint(db: AsyncSession, gateway_id: str, endpoint: str, *, actor: str) -> Gateway:
    """Where phones dial the gateway from now on (its listen port stays). Installed devices
    get the new endpoint the next time their code is shown; the ones already set up keep
    dialing the old one until then."""
    gateway = await get(db, gateway_id)
    endpoint = normalize_endpoint(endpoint)
    before, gateway.endpoint = gateway.endpoint, endpoint
    repository.add_audit(
        db,
        actor=actor,
        action="gateway.set_endpoint",
        target=gateway.id,
        detail=f"name={gateway.name} endpoint={before} -> {endpoint}",
    )
    log.info("gateway_endpoint_changed", gateway_id=gateway.id, endpoint=endpoint)
    return gateway


async def set_enabled(db: AsyncSession, gateway_id: str, enabled: bool, *, actor: str) -> Gateway:
    """A disabled gateway gets no new devices and its token is refused."""
    gateway = await get(db, gateway_id)
    gateway.is_enabled = enabled
    repository.add_audit(
        db,
        actor=actor,
        action="gateway.enable" if enabled else "gateway.disable",
        target=gateway.id,
        detail=f"name={gateway.name}",
    )
    return gateway


async def get(db: AsyncSession, gateway_id: str) -> Gateway:
    """The gateway; NotFound when there is none."""
    gateway = await repository.get(db, gateway_id)
    if gateway is None:
        raise NotFound("No such gateway")
    return gateway


async def find(db: AsyncSession, id_or_name: str) -> Gateway:
    """A gateway by id or by name (operator commands accept either)."""
    gateway = await repository.get(db, id_or_name) or await repository.get_by_name(db, id_or_name)
    if gateway is None:
        raise NotFound(f"No gateway {id_or_name!r}")
    return gateway


def seen_recently(gateway: Gateway, now: datetime, settings: Settings) -> bool:
    """Online: a heartbeat within the grace period."""
    return (
        gateway.is_online
        and gateway.last_heartbeat_at is not None
        and gateway.last_heartbeat_at >= now - timedelta(seconds=settings.offline_after_seconds)
    )


def to_out(
    gateway: Gateway, *, active_devices: int, now: datetime, settings: Settings
) -> GatewayOut:
    return GatewayOut(
        id=gateway.id,
        name=gateway.name,
        region=gateway.region_code,
        endpoint=gateway.endpoint,
        listen_port=gateway.listen_port,
        public_key=gateway.public_key,
        ipv4_pool=gateway.ipv4_pool,
        ipv6_pool=gateway.ipv6_pool,
        capacity=gateway.capacity,
        active_devices=active_devices,
        is_enabled=gateway.is_enabled,
        is_online=seen_recently(gateway, now, settings),
        interface_mode=gateway.interface_mode,
        agent_version=gateway.agent_version,
        peer_count=gateway.peer_count,
        rx_bps=gateway.rx_bps,
        tx_bps=gateway.tx_bps,
        garden_rx_bytes=gateway.garden_rx_bytes,
        garden_tx_bytes=gateway.garden_tx_bytes,
        revision=gateway.revision,
        applied_revision=gateway.applied_revision,
        last_heartbeat_at=gateway.last_heartbeat_at,
        created_at=gateway.created_at,
    )


async def list_out(db: AsyncSession, now: datetime, settings: Settings) -> list[GatewayOut]:
    """Every gateway as the operator sees it, with its current load."""
    return [
        to_out(gateway, active_devices=gateway.installed_devices, now=now, settings=settings)
        for gateway in await repository.list_all(db)
    ]


async def gateway_public_info(db: AsyncSession, gateway: Gateway) -> GatewayPublicInfo:
    """The gateway's public key, endpoint and its region's DNS servers, for a device config."""
    region = await repository.get_region(db, gateway.region_code)
    dns = region.dns_servers if region is not None else ""
    return GatewayPublicInfo(
        gateway_id=gateway.id,
        name=gateway.name,
        region_code=gateway.region_code,
        endpoint=gateway.endpoint,
        public_key=gateway.public_key,
        dns_servers=[server.strip() for server in dns.split(",") if server.strip()],
    )


# --- placement and addresses ----------------------------------------------------------------


async def placement_candidates(
    db: AsyncSession, now: datetime, region_code: str | None = None
) -> list[placement_repository.PlacementRow]:
    """Active regions (or one), each with its enabled gateways and their live devices, read
    in one statement: all that placing a device needs."""
    return await placement_repository.placement_rows(db, now, region_code)


# --- desired state ---------------------------------------------------------------------------


# Decrypted preshared keys per SecretBox: a poll of 10,000 peers would otherwise spend most of
# its time in Fernet. Bounded; the keys are decrypted on every poll anyway.


# --- what the agents report ------------------------------------------------------------------


async def authenticate(db: AsyncSession, token: str) -> Gateway:
    """The enabled gateway holding `token`; anything else is 401."""
    gateway = await repository.get_by_token_hash(db, hash_token(token))
    if gateway is None or not gateway.is_enabled:
        raise Unauthorized("Gateway token is not valid")
    return gateway


async def record_heartbeat(
    db: AsyncSession,
    gateway: Gateway,
    heartbeat: protocol.GatewayHeartbeat,
    now: datetime,
    bus: EventBus | None = None,
) -> protocol.HeartbeatAck:
    """Store the agent's health; a device's first handshake marks its session connected."""
    gateway.agent_version = heartbeat.agent_version
    gateway.interface_mode = heartbeat.interface_mode
    gateway.peer_count = heartbeat.peer_count
    gateway.rx_bps = heartbeat.rx_bps
    gateway.tx_bps = heartbeat.tx_bps
    gateway.garden_rx_bytes = heartbeat.garden_rx_bytes
    gateway.garden_tx_bytes = heartbeat.garden_tx_bytes
    advanced = heartbeat.applied_revision > gateway.applied_revision
    gateway.applied_revision = heartbeat.applied_revision
    if advanced:
        # A hold waits for a revision newer than any applied when it was stamped: only a
        # newer applied revision can release one.
        await leases.release_holds(db, gateway.id, heartbeat.applied_revision, bus)
    if not gateway.is_online:
        log.info("gateway_online", gateway_id=gateway.id, name=gateway.name)
        webhooks.record(
            db,
            "gateway.online",
            {"gateway_id": gateway.id, "gateway": gateway.name, "region": gateway.region_code},
            now=now,
        )
    gateway.is_online = True
    gateway.last_heartbeat_at = now
    if heartbeat.protocol_version not in protocol.SERVED_PROTOCOL_VERSIONS:
        log.warning(
            "gateway_protocol_mismatch",
            gateway_id=gateway.id,
            agent=heartbeat.protocol_version,
            control=protocol.PROTOCOL_VERSION,
        )
    devices = await repository.devices_by_public_key(db, gateway.id, heartbeat.handshakes)
    for device in devices:
        handshake_at = min(heartbeat.handshakes[device.public_key], now)  # agent clock skew
        previous = device.last_handshake_at
        if previous is not None and handshake_at <= previous:
            continue
        device.last_handshake_at = handshake_at
        if previous is None and device.session_id is not None:
            await sessions_service.mark_connected(db, device.session_id, now, bus)
    await db.flush()
    return protocol.HeartbeatAck(ok=True, server_time=now)
