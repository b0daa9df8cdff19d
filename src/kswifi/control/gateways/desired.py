"""A gateway's desired state (peers, leases, interface) and its revisions."""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.config import Settings
from kswifi.control.errors import (
    NotFound,
)
from kswifi.control.events import EventBus, gateway_channel, publish_after_commit
from kswifi.control.gateways import ipam, leases, repository, service
from kswifi.control.gateways.garden import garden_spec
from kswifi.control.security import SecretBox
from kswifi.protocol import models as protocol


async def bump_revision(
    db: AsyncSession, gateway_ids: Iterable[str], bus: EventBus | None
) -> dict[str, int]:
    """New desired-state revisions; their long-polls wake once this transaction commits
    (without a bus, at their next poll)."""
    ids = sorted(set(gateway_ids))  # a stable order: concurrent bumps lock rows alike
    if not ids:
        return {}
    revisions = await repository.bump_revisions(db, ids)
    for gateway_id, revision in revisions.items():
        if bus is None:
            break
        publish_after_commit(
            db, bus, gateway_channel(gateway_id), {"type": "revision", "revision": revision}
        )
    return revisions


async def current_revision(db: AsyncSession, gateway_id: str) -> int:
    gateway = await service.get(db, gateway_id)
    return gateway.revision


async def desired_state(
    db: AsyncSession,
    secrets: SecretBox,
    gateway_id: str,
    now: datetime,
    bus: EventBus | None = None,
    settings: Settings | None = None,
) -> protocol.DesiredState:
    """What the gateway must carry now: its interface, one peer per installed device (those
    drawing from a live session with the gateway's cumulative lease of it, the others in the
    garden, made from `settings`; without them there is no garden and such peers are dropped).

    A state that lowers one of its leases (or changes any of its grants) comes with a new
    revision: the gateway reports that revision applied, and only then are the bytes of a
    lowered lease free for other gateways.
    """
    gateway = await repository.lock(db, gateway_id)  # leases change: see `repository.lock`
    if gateway is None:
        raise NotFound("No such gateway")
    next_revision = gateway.revision + 1
    blocks = ipam.GatewayBlocks.parse(gateway.ipv4_pool, gateway.ipv6_pool)
    peer_rows = await repository.live_peers(db, gateway.id, now)
    lease_state = await leases.for_desired_state(db, gateway.id, next_revision, peer_rows, now, bus)
    quotas = lease_state.quotas
    if lease_state.new_revision:
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
            speed_mbps=row.speed_mbps or 0,
            expires_at=row.expires_at,
        )
        if row.session_id is not None
        else protocol.PeerSpec.model_construct(
            public_key=row.public_key,
            preshared_key=_decrypt_cached(secrets, row.preshared_key_encrypted),
            allowed_ips=[ipam.host_cidr(row.ipv4), ipam.host_cidr(row.ipv6)],
            session_id=None,
            quota_bytes=0,
            speed_mbps=0,
            expires_at=None,
        )
        for row in peer_rows
    ]
    garden = None
    if settings is not None:
        dns = (await service.gateway_public_info(db, gateway)).dns_servers
        garden = await garden_spec(settings, dns)
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
        report_applied=lease_state.report_applied,
        garden=garden,
    )


_PLAINTEXT_CACHE_SIZE = 200_000
_PLAINTEXTS: weakref.WeakKeyDictionary[SecretBox, dict[str, str]] = weakref.WeakKeyDictionary()


def _decrypt_cached(secrets: SecretBox, ciphertext: str) -> str:
    cache = _PLAINTEXTS.setdefault(secrets, {})
    plaintext = cache.get(ciphertext)
    if plaintext is None:
        if len(cache) >= _PLAINTEXT_CACHE_SIZE:
            cache.clear()
        plaintext = cache[ciphertext] = secrets.decrypt(ciphertext)
    return plaintext
