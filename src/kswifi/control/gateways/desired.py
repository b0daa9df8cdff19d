"""A gateway's desired state (peers, leases, interface) and its revisions."""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.config import Settings
from kswifi.control.errors import (
    NotFound,
)
from kswifi.control.events import EventBus, gateway_channel, publish_after_commit
from kswifi.control.gateways import answers, ipam, leases, repository, service
from kswifi.control.gateways.garden import garden_spec
from kswifi.control.models import Gateway, utcnow
from kswifi.control.security import SecretBox
from kswifi.protocol import models as protocol


async def bump_revision(
    db: AsyncSession,
    gateway_ids: Iterable[str],
    bus: EventBus | None,
    users: Iterable[str] | None = None,
) -> dict[str, int]:
    """New desired-state revisions; their long-polls wake once this transaction commits
    (without a bus, at their next poll). `users`: the people whose peers changed (None: it
    may be anyone's), so the next answers are built from their devices alone."""
    ids = sorted(set(gateway_ids))  # a stable order: concurrent bumps lock rows alike
    if not ids:
        return {}
    revisions = await repository.bump_revisions(db, ids)
    await repository.record_changes(db, revisions, users, utcnow())
    for gateway_id, revision in revisions.items():
        if bus is None:
            break
        publish_after_commit(
            db, bus, gateway_channel(gateway_id), {"type": "revision", "revision": revision}
        )
    return revisions


CHANGES_KEPT = timedelta(hours=1)  # far beyond `answers.WHOLE_EVERY`: no answer needs older


async def purge_changes(db: AsyncSession, now: datetime) -> int:
    """Forget the people recorded with revisions older than `CHANGES_KEPT`."""
    return await repository.purge_changes(db, now - CHANGES_KEPT)


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
    gateway = await _lock(db, gateway_id)
    whole = await _whole(db, secrets, gateway, now, bus, settings)
    return whole.state


async def desired_update(
    db: AsyncSession,
    secrets: SecretBox,
    gateway_id: str,
    now: datetime,
    bus: EventBus | None,
    settings: Settings | None,
    known: str | None,
) -> protocol.DesiredUpdate:
    """`desired_state` as an answer to an agent that takes changes: the whole state, or what
    changed since the answer tagged `known` (see `answers`).

    When this process sent that answer, the next is built from the changed people alone: the
    people recorded with the revisions since (`bump_revision`), those whose session ran out
    meanwhile, those a delivered lease hold concerns, and those drawing from a session other
    gateways carry too. Its cost follows the changes, not the gateway's size; every
    `answers.WHOLE_EVERY` an answer is made from every device again.
    """
    gateway = await _lock(db, gateway_id)
    sent = answers.held(gateway.id, known, now)
    if sent is not None:
        changed = await repository.changed_users(db, gateway.id, sent.revision)
        interface = _interface(secrets, gateway)
        if changed is not None and interface == sent.interface:
            try:
                return await _changes(db, secrets, gateway, now, bus, settings, sent, changed)
            except BaseException:
                answers.drop(gateway.id)  # `sent` may be half-updated: start over from whole
                raise
    whole = await _whole(db, secrets, gateway, now, bus, settings)
    return answers.answer(gateway.id, whole.state, known, now, whole.rows, whole.shared)


async def _lock(db: AsyncSession, gateway_id: str) -> Gateway:
    gateway = await repository.lock(db, gateway_id)  # leases change: see `repository.lock`
    if gateway is None:
        raise NotFound("No such gateway")
    return gateway


@dataclass(frozen=True)
class _Whole:
    state: protocol.DesiredState
    rows: list[repository.PeerRow]
    shared: frozenset[str]


async def _whole(
    db: AsyncSession,
    secrets: SecretBox,
    gateway: Gateway,
    now: datetime,
    bus: EventBus | None,
    settings: Settings | None,
) -> _Whole:
    next_revision = gateway.revision + 1
    peer_rows = await repository.live_peers(db, gateway.id, now)
    lease_state = await leases.for_desired_state(db, gateway.id, next_revision, peer_rows, now, bus)
    await _take_revision_if(db, gateway, lease_state)
    state = protocol.DesiredState.model_construct(
        revision=gateway.revision,
        interface=_interface(secrets, gateway),
        peers=_peers(secrets, peer_rows, lease_state.quotas),
        report_applied=lease_state.report_applied,
        garden=await _garden(db, gateway, settings),
    )
    return _Whole(state, peer_rows, lease_state.shared)


async def _changes(
    db: AsyncSession,
    secrets: SecretBox,
    gateway: Gateway,
    now: datetime,
    bus: EventBus | None,
    settings: Settings | None,
    sent: answers.Sent,
    people: set[str],
) -> protocol.DesiredUpdate:
    next_revision = gateway.revision + 1
    stamped = await leases.stamp_for_desired_state(db, gateway.id, next_revision)
    people |= sent.due(now) | sent.shared
    if stamped:
        people |= await repository.owners_of_sessions(db, stamped)
    peer_rows = await repository.live_peers(db, gateway.id, now, people) if people else []
    lease_state = await leases.for_desired_state(
        db, gateway.id, next_revision, peer_rows, now, bus, stamped=stamped
    )
    await _take_revision_if(db, gateway, lease_state)
    return answers.answer_changes(
        gateway.id,
        sent,
        revision=gateway.revision,
        people=people,
        rows=peer_rows,
        specs=_peers(secrets, peer_rows, lease_state.quotas),
        shared=lease_state.shared,
        report_applied=lease_state.report_applied,
        garden=await _garden(db, gateway, settings),
    )


async def _take_revision_if(
    db: AsyncSession, gateway: Gateway, lease_state: leases.DesiredLeases
) -> None:
    """The answer's own new revision, when its leases ask for one (the row is locked: +1)."""
    if lease_state.new_revision:
        revisions = await repository.bump_revisions(db, [gateway.id])
        gateway.revision = revisions[gateway.id]


def _interface(secrets: SecretBox, gateway: Gateway) -> protocol.GatewayInterface:
    blocks = ipam.GatewayBlocks.parse(gateway.ipv4_pool, gateway.ipv6_pool)
    return protocol.GatewayInterface(
        private_key=_decrypt_cached(secrets, gateway.private_key_encrypted),
        public_key=gateway.public_key,
        listen_port=gateway.listen_port,
        addresses=blocks.interface_addresses(),
    )


async def _garden(
    db: AsyncSession, gateway: Gateway, settings: Settings | None
) -> protocol.GardenSpec | None:
    if settings is None:
        return None
    dns = (await service.gateway_public_info(db, gateway)).dns_servers
    return await garden_spec(settings, dns)


def _peers(
    secrets: SecretBox, rows: Iterable[repository.PeerRow], quotas: dict[str, int]
) -> list[protocol.PeerSpec]:
    # Built without re-validation: every value comes from our own checked writes, and a
    # gateway with 10,000 peers polls this often.
    return [
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
        for row in rows
    ]


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
