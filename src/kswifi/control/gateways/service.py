"""Business rules of the gateways domain: registration, addresses, desired state, usage, leases
and health of the gateway agents."""

from __future__ import annotations

import base64
import ipaddress
import re
import weakref
from collections.abc import Iterable
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
    ServiceUnavailable,
    Unauthorized,
    Unprocessable,
)
from kswifi.control.events import EventBus, gateway_channel, publish_after_commit
from kswifi.control.gateways import ipam, leases, repository
from kswifi.control.gateways.schemas import GatewayOut
from kswifi.control.models import (
    LIVE_STATES,
    AddressRelease,
    Gateway,
)
from kswifi.control.security import SecretBox, hash_token, new_opaque_token
from kswifi.control.sessions import service as sessions_service
from kswifi.logs import get_logger
from kswifi.protocol import models as protocol

log = get_logger("kswifi.control.gateways")

_REGISTER_ATTEMPTS = 5
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class NoGatewayAvailable(ServiceUnavailable):
    """No enabled gateway with free capacity (in the asked region)."""

    code = "no_gateway_available"


class AddressPoolExhausted(ServiceUnavailable):
    """A gateway's address block (or the pool of blocks) has no free address left."""

    code = "address_pool_exhausted"


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
        blocks = await _carve_blocks(db, settings)
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


async def _carve_blocks(db: AsyncSession, settings: Settings) -> ipam.GatewayBlocks:
    taken = await repository.taken_blocks(db)
    try:
        pool_v4 = ipam.parse_network(settings.address_pool_v4)
        pool_v6 = ipam.parse_network(settings.address_pool_v6)
        ipv4 = ipam.carve_block(pool_v4, settings.address_pool_v4_prefix, [v4 for v4, _ in taken])
        ipv6 = ipam.carve_block(pool_v6, 64, [v6 for _, v6 in taken])
        return ipam.GatewayBlocks.parse(str(ipv4), str(ipv6))
    except ipam.PoolExhausted as exc:
        raise AddressPoolExhausted(f"cannot add a gateway: {exc}") from exc
    except ipam.AddressError as exc:
        raise AddressPoolExhausted(f"gateway address pools are misconfigured: {exc}") from exc


async def rotate_token(db: AsyncSession, gateway_id: str, *, actor: str) -> tuple[Gateway, str]:
    """A new token for the gateway; the old one stops working at once."""
    gateway = await _get(db, gateway_id)
    token = new_opaque_token()
    gateway.token_hash = hash_token(token)
    repository.add_audit(
        db, actor=actor, action="gateway.rotate_token", target=gateway.id, detail=""
    )
    return gateway, token


async def set_enabled(db: AsyncSession, gateway_id: str, enabled: bool, *, actor: str) -> Gateway:
    """A disabled gateway gets no new devices and its token is refused."""
    gateway = await _get(db, gateway_id)
    gateway.is_enabled = enabled
    repository.add_audit(
        db,
        actor=actor,
        action="gateway.enable" if enabled else "gateway.disable",
        target=gateway.id,
        detail=f"name={gateway.name}",
    )
    return gateway


async def _get(db: AsyncSession, gateway_id: str) -> Gateway:
    gateway = await repository.get(db, gateway_id)
    if gateway is None:
        raise NotFound("No such gateway")
    return gateway


async def get(db: AsyncSession, gateway_id: str) -> Gateway:
    """The gateway; NotFound when there is none."""
    return await _get(db, gateway_id)


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
        revision=gateway.revision,
        applied_revision=gateway.applied_revision,
        last_heartbeat_at=gateway.last_heartbeat_at,
        created_at=gateway.created_at,
    )


async def list_out(db: AsyncSession, now: datetime, settings: Settings) -> list[GatewayOut]:
    """Every gateway as the operator sees it, with its current load."""
    counts = await repository.live_device_counts(db, now)
    return [
        to_out(gateway, active_devices=counts.get(gateway.id, 0), now=now, settings=settings)
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


def placement_rank(
    gateway: Gateway, load: int, now: datetime, settings: Settings | None
) -> tuple[int, float] | None:
    """(tier, share of capacity used) of a gateway that can take a device, lower is better:
    tier 0 online, 1 never seen yet; None when it is full or known to be offline."""
    if load >= gateway.capacity:
        return None
    if settings is not None:
        online = seen_recently(gateway, now, settings)
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


async def placement_candidates(
    db: AsyncSession, now: datetime, region_code: str | None = None
) -> list[repository.PlacementRow]:
    """Active regions (or one), each with its enabled gateways and their live devices, read
    in one statement: all that placing a device needs."""
    return await repository.placement_rows(db, now, region_code)


async def allocate_host(
    db: AsyncSession, gateway: Gateway, settings: Settings, now: datetime
) -> tuple[int, str, str]:
    """A free host index on the gateway and its (IPv4, IPv6) addresses, race-free.

    The gateway row is locked for the transaction; the lowest address released longer than
    the cool-down ago is reused first, otherwise the next never-used index is taken.
    """
    locked = await repository.lock(db, gateway.id)
    if locked is None:
        raise NotFound("No such gateway")
    blocks = ipam.GatewayBlocks.parse(locked.ipv4_pool, locked.ipv6_pool)
    cutoff = now - timedelta(seconds=settings.address_cooldown_seconds)
    release = await repository.oldest_reusable_release(db, locked.id, cutoff)
    if release is not None:
        host_index = release.host_index
        await repository.delete_release(db, locked.id, host_index)
    else:
        host_index = locked.next_host_index
        if host_index > blocks.max_host_index:
            cooling = await repository.count_cooling_releases(db, locked.id)
            later = f"; {cooling} freed address(es) return after the cool-down" if cooling else ""
            raise AddressPoolExhausted(
                f"Gateway {locked.name} has no free address left in {blocks.ipv4}{later}."
                " Try another region or try again later."
            )
        locked.next_host_index = host_index + 1
    ipv4, ipv6 = blocks.device_addresses(host_index)
    await db.flush()
    return host_index, ipv4, ipv6


@dataclass(frozen=True)
class NewHost:
    """A device address taken on a gateway, and the gateway's new desired-state revision."""

    host_index: int
    ipv4: str
    ipv6: str
    revision: int


async def allocate_host_and_bump(
    db: AsyncSession, gateway_id: str, settings: Settings, now: datetime, bus: EventBus
) -> NewHost:
    """`allocate_host` and `bump_revision` of one gateway in a single statement (PostgreSQL).

    The gateway row stays locked until the transaction ends, so callers do this last, just
    before their inserts and the commit. Same rules: the lowest address released longer than
    the cool-down ago first, else the next never-used index; the long-polls wake on commit.
    """
    cutoff = now - timedelta(seconds=settings.address_cooldown_seconds)
    taken = await repository.take_host_and_bump(db, gateway_id, cutoff)
    if taken is None:
        raise NotFound("No such gateway")
    blocks = ipam.cached_blocks(taken.ipv4_pool, taken.ipv6_pool)
    if taken.host_index > blocks.max_host_index:
        cooling = await repository.count_cooling_releases(db, gateway_id)
        later = f"; {cooling} freed address(es) return after the cool-down" if cooling else ""
        raise AddressPoolExhausted(
            f"Gateway {taken.name} has no free address left in {blocks.ipv4}{later}."
            " Try another region or try again later."
        )
    ipv4, ipv6 = blocks.device_addresses(taken.host_index)
    publish_after_commit(
        db, bus, gateway_channel(gateway_id), {"type": "revision", "revision": taken.revision}
    )
    return NewHost(taken.host_index, ipv4, ipv6, taken.revision)


async def release_host(db: AsyncSession, gateway_id: str, host_index: int, now: datetime) -> None:
    """Give a device's address back; it is handed out again after the cool-down."""
    if host_index < ipam.FIRST_DEVICE_HOST_INDEX:
        raise ValueError(f"host index {host_index} is not a device address")
    existing = await repository.get_release(db, gateway_id, host_index)
    if existing is not None:
        existing.released_at = now
    else:
        db.add(AddressRelease(gateway_id=gateway_id, host_index=host_index, released_at=now))
    await db.flush()


# --- desired state ---------------------------------------------------------------------------


async def bump_revision(
    db: AsyncSession, gateway_ids: Iterable[str], bus: EventBus
) -> dict[str, int]:
    """New desired-state revisions; their long-polls wake once this transaction commits."""
    ids = sorted(set(gateway_ids))  # a stable order: concurrent bumps lock rows alike
    revisions = await repository.bump_revisions(db, ids)
    for gateway_id, revision in revisions.items():
        publish_after_commit(
            db, bus, gateway_channel(gateway_id), {"type": "revision", "revision": revision}
        )
    return revisions


async def bump_for_session(db: AsyncSession, session_id: str, bus: EventBus) -> dict[str, int]:
    """Bump every gateway carrying an active device of the session (its peers changed)."""
    return await bump_revision(db, await repository.gateways_carrying(db, session_id), bus)


async def current_revision(db: AsyncSession, gateway_id: str) -> int:
    gateway = await _get(db, gateway_id)
    return gateway.revision


async def has_undelivered_holds(db: AsyncSession, gateway_id: str) -> bool:
    """Whether a lease of the gateway was lowered and its desired state has not said so yet
    (a long-poll answers at once: the bytes are free only once the gateway applied it)."""
    return await repository.has_undelivered_holds(db, gateway_id)


async def desired_state(
    db: AsyncSession,
    secrets: SecretBox,
    gateway_id: str,
    now: datetime,
    bus: EventBus | None = None,
) -> protocol.DesiredState:
    """What the gateway must carry now: its interface and one peer per active device of a
    live session, each with the gateway's cumulative lease of that session.

    A state that lowers one of its leases (or changes any of its grants) comes with a new
    revision: the gateway reports that revision applied, and only then are the bytes of a
    lowered lease free for other gateways.
    """
    gateway = await repository.lock(db, gateway_id)  # leases change: see `repository.lock`
    if gateway is None:
        raise NotFound("No such gateway")
    next_revision = gateway.revision + 1
    delivered_holds = await repository.stamp_holds(db, gateway.id, next_revision)
    blocks = ipam.GatewayBlocks.parse(gateway.ipv4_pool, gateway.ipv6_pool)
    peer_rows = await repository.live_peers(db, gateway.id, now)
    own_leases = [
        repository.LeaseRow(
            gateway.id,
            row.session_id,
            row.lease_granted_bytes,
            row.lease_used_bytes,
            row.lease_held_bytes or 0,
            row.lease_served_at,
        )
        for row in peer_rows
        if row.lease_granted_bytes is not None and row.lease_used_bytes is not None
    ]
    stored = {row.session_id: row.granted_bytes for row in own_leases}
    quotas = await _refresh_leases(
        db,
        gateway.id,
        {row.session_id: (row.data_limit_bytes, row.used_bytes) for row in peer_rows},
        carriers=await repository.other_carriers(db, gateway.id),
        rows=own_leases + await repository.other_leases_of_sessions_carried_by(db, gateway.id),
        now=now,
        bus=bus,
        delivered_revision=next_revision,
    )
    # A first lease of a new peer comes with the revision that added the peer.
    changed = [
        (stored[sid], quota) for sid, quota in quotas.items() if stored.get(sid, quota) != quota
    ]
    lowered = any(quota < before for before, quota in changed)
    if delivered_holds or changed:
        await repository.bump_revisions(db, [gateway.id])  # the gateway row is locked: +1
        gateway.revision = next_revision
    # Built without re-validation: every value comes from our own checked writes, and a
    # gateway with 10,000 peers polls this often.
    peers = [
        protocol.PeerSpec.model_construct(
            public_key=row.public_key,
            preshared_key=_decrypt_cached(secrets, row.preshared_key_encrypted),
            allowed_ips=[ipam.host_cidr(row.ipv4), ipam.host_cidr(row.ipv6)],
            session_id=row.session_id,
            quota_bytes=quotas[row.session_id],
            speed_mbps=row.speed_mbps,
            expires_at=row.expires_at,
        )
        for row in peer_rows
    ]
    interface = protocol.GatewayInterface(
        private_key=secrets.decrypt(gateway.private_key_encrypted),
        public_key=gateway.public_key,
        listen_port=gateway.listen_port,
        addresses=blocks.interface_addresses(),
    )
    return protocol.DesiredState.model_construct(
        revision=gateway.revision,
        interface=interface,
        peers=peers,
        report_applied=bool(delivered_holds or lowered),
    )


# Decrypted preshared keys per SecretBox: a poll of 10,000 peers would otherwise spend most of
# its time in Fernet. Bounded; the keys are decrypted on every poll anyway.
_PLAINTEXTS: weakref.WeakKeyDictionary[SecretBox, dict[str, str]] = weakref.WeakKeyDictionary()
_PLAINTEXT_CACHE_SIZE = 200_000


def _decrypt_cached(secrets: SecretBox, ciphertext: str) -> str:
    cache = _PLAINTEXTS.setdefault(secrets, {})
    plaintext = cache.get(ciphertext)
    if plaintext is None:
        if len(cache) >= _PLAINTEXT_CACHE_SIZE:
            cache.clear()
        plaintext = cache[ciphertext] = secrets.decrypt(ciphertext)
    return plaintext


async def _refresh_leases(
    db: AsyncSession,
    gateway_id: str,
    budgets: dict[str, tuple[int, int]],
    *,
    carriers: dict[str, set[str]],
    rows: list[repository.LeaseRow],
    now: datetime,
    bus: EventBus | None,
    delivered_revision: int | None = None,
) -> dict[str, int]:
    """Top up `gateway_id`'s leases of the sessions in `budgets` ((limit, used) per session)
    and release those of gateways that stopped carrying them; its cumulative grant per session.

    A session only this gateway carries is its alone to lease. A shared one (or one whose
    other leases change) is recomputed under a lock of its row, so two gateways topping up at
    once never hand out the same bytes twice.

    A lowered lease stays held (reserved) until its gateway applied it: the gateway that asks
    gets it with this answer when `delivered_revision` says at which revision (a desired
    state); any other gateway whose lease was lowered is told to fetch its desired state,
    which delivers it (see `desired_state`).

    A gateway that served a session nothing for `leases.IDLE_SECONDS` (nor dropped its
    packets at the quota) is idle: it gets no top-up, and gives back its whole unused lease
    when a gateway in use runs short.
    """
    if not budgets:
        return {}
    held = _leases_by_session(rows)
    missing = [sid for sid in budgets if gateway_id not in held.get(sid, {})]
    if missing:
        await repository.ensure_leases(db, [(gateway_id, sid) for sid in missing], now)
        held.update(_leases_by_session(await repository.leases_of(db, missing)))
    budgets = dict(budgets)
    # Idleness only matters between carriers, and every shared session is planned again
    # below from fresh rows: the first pass leaves it out.
    plans = {
        session_id: _plan_leases(budget, held[session_id], carriers.get(session_id), gateway_id)
        for session_id, budget in budgets.items()
    }
    contested = [
        session_id
        for session_id, plan in plans.items()
        if len(carriers.get(session_id, set()) | {gateway_id}) > 1
        or any(
            other_id != gateway_id and lease != held[session_id][other_id]
            for other_id, lease in plan.items()
        )
    ]
    if contested:
        budgets.update(await repository.lock_session_budgets(db, contested))
        fresh_rows = await repository.leases_of(db, contested)
        fresh = _leases_by_session(fresh_rows)
        idle = _idle_by_session(fresh_rows, now)
        for session_id in contested:
            held[session_id] = fresh.get(session_id, {})
            plans[session_id] = _plan_leases(
                budgets[session_id],
                held[session_id],
                carriers.get(session_id),
                gateway_id,
                idle.get(session_id),
            )
    changes: list[repository.GrantChange] = []
    told: set[str] = set()
    for session_id, plan in plans.items():
        for other_id, lease in plan.items():
            before = held[session_id][other_id]
            if lease == before:
                continue
            until: int | None = None  # a hold that stays as it was
            if lease.held_bytes == 0:
                until = 0
            elif lease.granted_bytes < before.granted_bytes:
                if other_id == gateway_id and delivered_revision is not None:
                    until = delivered_revision
                else:
                    until = 0  # not delivered yet: its desired state stamps the revision
                    told.add(other_id)
            changes.append(
                repository.GrantChange(
                    other_id, session_id, lease.granted_bytes, lease.held_bytes, until
                )
            )
    await repository.set_granted(db, changes, now)
    if bus is not None:
        for other_id in sorted(told):
            publish_after_commit(db, bus, gateway_channel(other_id), {"type": "leases"})
    return {session_id: plan[gateway_id].granted_bytes for session_id, plan in plans.items()}


def _leases_by_session(rows: Iterable[repository.LeaseRow]) -> dict[str, dict[str, leases.Lease]]:
    by_session: dict[str, dict[str, leases.Lease]] = {}
    for row in rows:
        by_session.setdefault(row.session_id, {})[row.gateway_id] = leases.Lease(
            row.granted_bytes, row.used_bytes, row.held_bytes
        )
    return by_session


def _idle_by_session(rows: Iterable[repository.LeaseRow], now: datetime) -> dict[str, set[str]]:
    """Per session, the gateways that served it nothing for `leases.IDLE_SECONDS`."""
    cutoff = now - timedelta(seconds=leases.IDLE_SECONDS)
    idle: dict[str, set[str]] = {}
    for row in rows:
        if row.served_at is None or row.served_at < cutoff:
            idle.setdefault(row.session_id, set()).add(row.gateway_id)
    return idle


def _plan_leases(
    budget: tuple[int, int],
    held: dict[str, leases.Lease],
    carriers: set[str] | None,
    gateway_id: str,
    idle: set[str] | None = None,
) -> dict[str, leases.Lease]:
    limit_bytes, used_bytes = budget
    if (carriers or set()) <= {gateway_id} and held.keys() == {gateway_id}:
        # The common case, a session only this gateway ever carried: skip the general plan.
        own = held[gateway_id]
        granted = leases.sole_carrier_grant(limit_bytes, used_bytes, own.used_bytes)
        return {gateway_id: own if own.granted_bytes == granted else own.regrant(granted)}
    return leases.plan_session_leases(
        limit_bytes=limit_bytes,
        used_total_bytes=used_bytes,
        leases=held,
        carriers=(carriers or set()) | {gateway_id},
        requesting=[gateway_id],
        idle=idle or (),
    )


async def grant_leases(
    db: AsyncSession,
    gateway: Gateway,
    session_ids: Iterable[str],
    now: datetime,
    bus: EventBus | None = None,
) -> protocol.LeaseResponse:
    """Top up the gateway's leases of the given sessions. Sessions it does not carry, or that
    are no longer live, get no grant (the agent drops them with the next desired state)."""
    await repository.lock(db, gateway.id)  # leases change: see `repository.lock`
    wanted = set(session_ids)
    carried = await repository.carriers_of(db, wanted)
    budgets = {
        session_id: (session.data_limit_bytes, session.used_bytes)
        for session_id, session in (await repository.sessions_by_id(db, wanted)).items()
        if gateway.id in carried.get(session_id, set())
        and session.status in LIVE_STATES
        and (session.expires_at is None or session.expires_at > now)
    }
    quotas = await _refresh_leases(
        db,
        gateway.id,
        budgets,
        carriers=carried,
        rows=await repository.leases_of(db, budgets),
        now=now,
        bus=bus,
    )
    refused = wanted - set(budgets)
    if refused:
        log.info("lease_refused", gateway_id=gateway.id, session_count=len(refused))
    return protocol.LeaseResponse(
        revision=gateway.revision,
        leases=[
            protocol.LeaseGrant(session_id=session_id, quota_bytes=quota)
            for session_id, quota in sorted(quotas.items())
        ],
    )


# --- what the agents report ------------------------------------------------------------------


async def authenticate(db: AsyncSession, token: str) -> Gateway:
    """The enabled gateway holding `token`; anything else is 401."""
    gateway = await repository.get_by_token_hash(db, hash_token(token))
    if gateway is None or not gateway.is_enabled:
        raise Unauthorized("Gateway token is not valid")
    return gateway


async def apply_usage(
    db: AsyncSession,
    bus: EventBus,
    gateway: Gateway,
    report: protocol.UsageReport,
    now: datetime,
) -> protocol.UsageAck:
    """Apply one usage batch exactly once: a replayed or older sequence changes nothing."""
    locked = await repository.lock(db, gateway.id)  # one batch of a gateway at a time
    if locked is None:
        raise Unauthorized("Gateway token is not valid")
    if report.sequence <= locked.last_usage_sequence:
        return protocol.UsageAck(
            accepted=False, duplicate=True, last_sequence=locked.last_usage_sequence
        )
    totals: dict[str, tuple[int, int, bool]] = {}
    for delta in report.deltas:
        known = totals.get(delta.session_id)
        totals[delta.session_id] = (
            (delta.rx_bytes, delta.tx_bytes, delta.quota_exhausted)
            if known is None
            else (
                known[0] + delta.rx_bytes,
                known[1] + delta.tx_bytes,
                known[2] or delta.quota_exhausted,
            )
        )
    # A device that left the gateway (revoked, rotated onto another one) may have been served
    # bytes just before: a gateway that ever held a lease of the session may bill it. Sessions
    # it never carried stay refused.
    carried = await repository.accept_usage_batch(
        db,
        locked,
        sequence=report.sequence,
        received_at=now,
        served={session_id: rx + tx for session_id, (rx, tx, _) in totals.items()},
    )
    if carried is None:
        return protocol.UsageAck(
            accepted=False, duplicate=True, last_sequence=locked.last_usage_sequence
        )
    if len(carried) < len(totals):
        refused = sorted(set(totals) - carried)
        log.warning(
            "usage_refused_not_carried",
            gateway_id=locked.id,
            sequence=report.sequence,
            session_ids=refused[:20],
            refused_count=len(refused),
        )
    accepted = {session_id: totals[session_id] for session_id in sorted(carried)}

    flagged = [session_id for session_id, (_, _, exhausted) in accepted.items() if exhausted]
    held = _leases_by_session(await repository.leases_of(db, flagged)) if flagged else {}
    if flagged:  # the kernel dropped the phone's packets: in use, even if nothing was served
        await repository.mark_served(db, locked.id, flagged, now)
    outcomes = await sessions_service.record_usage_batch(
        db,
        bus,
        deltas=[
            sessions_service.UsageDelta(
                session_id,
                rx,
                tx,
                exhausted and _lease_was_the_remainder(held.get(session_id), locked.id),
                reserved_elsewhere=_reserved_elsewhere(held.get(session_id), locked.id),
            )
            for session_id, (rx, tx, exhausted) in accepted.items()
            if rx or tx or exhausted
        ],
        now=now,
    )
    ended: list[str] = []
    live: dict[str, sessions_service.SessionUsageOutcome] = {}
    for outcome in outcomes:
        if outcome.status in LIVE_STATES:
            live[outcome.session_id] = outcome
        elif outcome.was_live:
            ended.append(outcome.session_id)
    # Every accepted session gets its lease row (empty if new), served bytes counted; with it,
    # as for a desired state, the other carriers and leases of the live ones (usually none).
    lease_usage = await repository.add_lease_usage(
        db,
        locked.id,
        {session_id: rx + tx for session_id, (rx, tx, _) in accepted.items()},
        now,
        others_of=live,
    )

    bumped: set[str] = set()
    for session_id in ended:
        bumped.update(await repository.gateways_carrying(db, session_id))
    if ended:
        bumped.add(locked.id)
        await bump_revision(db, bumped, bus)
    grants = await _refresh_leases(
        db,
        locked.id,
        {session_id: (s.data_limit_bytes, s.used_bytes) for session_id, s in live.items()},
        carriers=lease_usage.other_carriers,
        rows=[row for row in lease_usage.own if row.session_id in live] + lease_usage.others,
        now=now,
        bus=bus,
    )
    return protocol.UsageAck(
        accepted=True,
        duplicate=False,
        last_sequence=report.sequence,
        leases=[
            protocol.LeaseGrant(session_id=session_id, quota_bytes=quota)
            for session_id, quota in sorted(grants.items())
        ],
    )


def _reserved_elsewhere(held: dict[str, leases.Lease] | None, gateway_id: str) -> int:
    """Bytes of the session the other gateways may still serve."""
    return leases.total_reserved(
        lease for other, lease in (held or {}).items() if other != gateway_id
    )


def _lease_was_the_remainder(held: dict[str, leases.Lease] | None, gateway_id: str) -> bool:
    """Whether a gateway's kernel saying "quota exhausted" means the SESSION is exhausted: only
    when no other gateway holds enough of the session for a full packet. A gateway whose lease
    is a share (or nothing: the rest is leased elsewhere) only used up that share; it asks for
    more, and the session goes on on the other gateways. Each gateway's quota ends at most one
    packet short of its lease, so a shared session ends at most that short per gateway."""
    others = (held or {}).items()
    return all(
        lease.reserved_bytes < leases.PACKET_BYTES for other, lease in others if other != gateway_id
    )


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
    advanced = heartbeat.applied_revision > gateway.applied_revision
    gateway.applied_revision = heartbeat.applied_revision
    # A hold waits for a revision newer than any applied when it was stamped: only a newer
    # applied revision can release one.
    freed = (
        await repository.release_holds(db, gateway.id, heartbeat.applied_revision)
        if advanced
        else []
    )
    if freed and bus is not None:
        # Bytes this gateway gave back are free now: its co-carriers fetch their top-ups.
        carriers = await repository.carriers_of(db, freed)
        for other_id in sorted(set().union(*carriers.values()) - {gateway.id}):
            publish_after_commit(db, bus, gateway_channel(other_id), {"type": "leases"})
    if not gateway.is_online:
        log.info("gateway_online", gateway_id=gateway.id, name=gateway.name)
    gateway.is_online = True
    gateway.last_heartbeat_at = now
    if heartbeat.protocol_version != protocol.PROTOCOL_VERSION:
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
        if previous is None:
            await sessions_service.mark_connected(db, device.session_id, now, bus)
    await db.flush()
    return protocol.HeartbeatAck(ok=True, server_time=now)
