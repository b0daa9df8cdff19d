"""Addresses: the gateway's pools carved at registration, a device's host taken and released
(one allocation path). Taking a host installs a device on the gateway and giving it back
removes it: the gateway's `installed_devices` count moves here, and only here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.config import Settings
from kswifi.control.errors import (
    NotFound,
    ServiceUnavailable,
)
from kswifi.control.events import EventBus, gateway_channel, publish_after_commit
from kswifi.control.gateways import address_repository, ipam, repository
from kswifi.control.models import (
    AddressRelease,
    Gateway,
)


class AddressPoolExhausted(ServiceUnavailable):
    """A gateway's address block (or the pool of blocks) has no free address left."""

    code = "address_pool_exhausted"


async def carve_blocks(db: AsyncSession, settings: Settings) -> ipam.GatewayBlocks:
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
    release = await address_repository.oldest_reusable_release(db, locked.id, cutoff)
    if release is not None:
        host_index = release.host_index
        await address_repository.delete_release(db, locked.id, host_index)
    else:
        host_index = locked.next_host_index
        if host_index > blocks.max_host_index:
            cooling = await address_repository.count_cooling_releases(db, locked.id)
            later = f"; {cooling} freed address(es) return after the cool-down" if cooling else ""
            raise AddressPoolExhausted(
                f"Gateway {locked.name} has no free address left in {blocks.ipv4}{later}."
                " Try another region or try again later."
            )
        locked.next_host_index = host_index + 1
    locked.installed_devices += 1
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
    db: AsyncSession,
    gateway_id: str,
    settings: Settings,
    now: datetime,
    bus: EventBus,
    *,
    user_id: str,
) -> NewHost:
    """`allocate_host` and `bump_revision` of one gateway in a single statement (PostgreSQL).

    The gateway row stays locked until the transaction ends, so callers do this last, just
    before their inserts and the commit. Same rules: the lowest address released longer than
    the cool-down ago first, else the next never-used index; the long-polls wake on commit.
    The revision is recorded as a change of `user_id`'s peers (the device's owner).
    """
    cutoff = now - timedelta(seconds=settings.address_cooldown_seconds)
    taken = await address_repository.take_host_and_bump(db, gateway_id, cutoff)
    if taken is None:
        raise NotFound("No such gateway")
    blocks = ipam.cached_blocks(taken.ipv4_pool, taken.ipv6_pool)
    if taken.host_index > blocks.max_host_index:
        cooling = await address_repository.count_cooling_releases(db, gateway_id)
        later = f"; {cooling} freed address(es) return after the cool-down" if cooling else ""
        raise AddressPoolExhausted(
            f"Gateway {taken.name} has no free address left in {blocks.ipv4}{later}."
            " Try another region or try again later."
        )
    ipv4, ipv6 = blocks.device_addresses(taken.host_index)
    await repository.record_changes(db, {gateway_id: taken.revision}, [user_id], now)
    publish_after_commit(
        db, bus, gateway_channel(gateway_id), {"type": "revision", "revision": taken.revision}
    )
    return NewHost(taken.host_index, ipv4, ipv6, taken.revision)


async def release_host(db: AsyncSession, gateway_id: str, host_index: int, now: datetime) -> None:
    """Give a device's address back (the device leaves the gateway); it is handed out again
    after the cool-down."""
    if host_index < ipam.FIRST_DEVICE_HOST_INDEX:
        raise ValueError(f"host index {host_index} is not a device address")
    await address_repository.count_installed(db, gateway_id, -1)
    existing = await address_repository.get_release(db, gateway_id, host_index)
    if existing is not None:
        existing.released_at = now
    else:
        db.add(AddressRelease(gateway_id=gateway_id, host_index=host_index, released_at=now))
    await db.flush()
