"""The gateway protocol, control-plane half: desired state and long-poll, usage, heartbeat,
leases, and offline detection."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import select, update

from kswifi.control import db as control_db
from kswifi.control.deps import AppContext
from kswifi.control.events import Event, InProcessEventBus, gateway_channel, session_channel
from kswifi.control.gateways import desired as gateway_desired
from kswifi.control.gateways import ingest
from kswifi.control.gateways.leases import rules as leases
from kswifi.control.models import (
    DataSession,
    Device,
    Gateway,
    GatewayLease,
    SessionStatus,
    UsageBatch,
    utcnow,
)
from kswifi.control.regions import service as regions
from kswifi.control.sessions import service as sessions_service
from kswifi.protocol.models import DesiredState, UsageAck, UsageReport
from tests.control.gateways.conftest import RegisteredGateway, World

STATE = "/api/gateway/v1/desired-state"
USAGE = "/api/gateway/v1/usage"
HEARTBEAT = "/api/gateway/v1/heartbeat"
LEASES = "/api/gateway/v1/leases"


def usage_report(
    sequence: int, *deltas: tuple[str, int, int], exhausted: bool = False
) -> dict[str, Any]:
    return {
        "sequence": sequence,
        "sent_at": utcnow().isoformat(),
        "deltas": [
            {"session_id": sid, "rx_bytes": rx, "tx_bytes": tx, "quota_exhausted": exhausted}
            for sid, rx, tx in deltas
        ],
    }


def heartbeat(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "agent_version": "0.1.0",
        "interface_mode": "userspace",
        "peer_count": 1,
        "rx_bps": 1000,
        "tx_bps": 2000,
        "applied_revision": 3,
    }
    body.update(fields)
    return body


async def fetch_state(
    client: httpx.AsyncClient, gateway: RegisteredGateway, since: int | None = None
) -> DesiredState:
    params = {} if since is None else {"since": since}
    response = await client.get(STATE, headers=gateway.headers, params=params)
    assert response.status_code == 200, response.text
    return DesiredState.model_validate(response.json())


async def post_heartbeat(
    client: httpx.AsyncClient, gateway: RegisteredGateway, **fields: Any
) -> None:
    response = await client.post(HEARTBEAT, headers=gateway.headers, json=heartbeat(**fields))
    assert response.status_code == 200, response.text


async def post_usage(
    client: httpx.AsyncClient, gateway: RegisteredGateway, body: dict[str, Any]
) -> UsageAck:
    response = await client.post(USAGE, headers=gateway.headers, json=body)
    assert response.status_code == 200, response.text
    return UsageAck.model_validate(response.json())


class TestAuth:
    @pytest.mark.parametrize(
        ("method", "path", "body"),
        [
            ("GET", STATE, None),
            ("POST", USAGE, usage_report(1)),
            ("POST", HEARTBEAT, heartbeat()),
            ("POST", LEASES, {"session_ids": []}),
        ],
    )
    async def test_missing_or_wrong_token_is_401(
        self, client: httpx.AsyncClient, world: World, method: str, path: str, body: Any
    ) -> None:
        await world.gateway()
        for headers in ({}, {"Authorization": "Bearer not-a-gateway-token"}):
            response = await client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"

    async def test_a_user_access_token_is_not_a_gateway_token(
        self, client: httpx.AsyncClient, world: World, user: Any
    ) -> None:
        await world.gateway()
        assert (await client.get(STATE, headers=user.headers)).status_code == 401


class TestDesiredState:
    async def test_interface_and_peer(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        gateway = await world.gateway()
        session_id = await world.session(limit_bytes=5_000_000, speed_mbps=25)
        device = await world.device(session_id, gateway.id)
        state = await fetch_state(client, gateway)

        stored = await world.get_gateway(gateway.id)
        assert state.revision == stored.revision == 2  # 1 at registration, bumped by the device
        assert state.interface is not None
        private = X25519PrivateKey.from_private_bytes(base64.b64decode(state.interface.private_key))
        public_raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        assert base64.b64encode(public_raw).decode() == state.interface.public_key
        assert state.interface.public_key == stored.public_key
        assert state.interface.listen_port == 51820
        assert state.interface.addresses == ["100.64.0.1/16", "fd4b:5357:4946::1/64"]

        [peer] = state.peers
        session = await world.get_session(session_id)
        assert peer.public_key == device.public_key
        assert peer.preshared_key == device.preshared_key
        assert peer.allowed_ips == ["100.64.0.2/32", "fd4b:5357:4946::2/128"]
        assert peer.session_id == session_id
        assert peer.quota_bytes == 5_000_000
        assert peer.speed_mbps == 25
        assert peer.expires_at == session.expires_at

        async with ctx.db.transaction() as db:
            [lease] = await db.scalars(select(GatewayLease))
        assert (lease.gateway_id, lease.session_id) == (gateway.id, session_id)
        assert (lease.granted_bytes, lease.used_bytes) == (5_000_000, 0)

    async def test_every_installed_device_only_live_sessions_with_limits(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        gateway = await world.gateway()
        live = await world.device(await world.session(), gateway.id)
        connected = await world.device(await world.session(status="connected"), gateway.id)
        exhausted = await world.device(await world.session(status="exhausted"), gateway.id)
        past = await world.device(
            await world.session(expires_at=utcnow() - timedelta(seconds=1)), gateway.id
        )
        removed = await world.device(await world.session(), gateway.id)
        async with ctx.db.transaction() as db:
            await db.execute(update(Device).where(Device.id == removed.id).values(status="removed"))
        other_gateway = await world.gateway()
        await world.device(await world.session(), other_gateway.id)

        state = await fetch_state(client, gateway)
        sessions = {peer.public_key: peer.session_id for peer in state.peers}
        assert sessions == {
            live.public_key: live.session_id,
            connected.public_key: connected.session_id,
            # Installed, no session to draw from: the walled garden.
            exhausted.public_key: None,
            past.public_key: None,
        }

    async def test_lease_is_limit_minus_bytes_used_on_other_gateways(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        first, second = await world.gateway(), await world.gateway()
        session_id = await world.session(limit_bytes=10_000_000)
        moved = await world.device(session_id, first.id)
        await post_usage(client, first, usage_report(1, (session_id, 1_000_000, 2_000_000)))
        async with ctx.db.transaction() as db:  # the device moves to the second gateway
            await db.execute(update(Device).where(Device.id == moved.id).values(status="removed"))
        await world.device(session_id, second.id)

        # The first gateway may serve its 10 MB grant until it applied the state without the
        # device: the second gets nothing yet.
        [peer] = (await fetch_state(client, second)).peers
        assert peer.quota_bytes == 0
        first_state = await fetch_state(client, first)
        assert first_state.peers == []
        await post_heartbeat(client, first, applied_revision=first_state.revision - 1)
        [peer] = (await fetch_state(client, second)).peers
        assert peer.quota_bytes == 0  # an older revision applied does not free the bytes
        await post_heartbeat(client, first, applied_revision=first_state.revision)
        [peer] = (await fetch_state(client, second)).peers
        assert peer.quota_bytes == 7_000_000
        async with ctx.db.transaction() as db:
            leases = {
                lease.gateway_id: (lease.granted_bytes, lease.used_bytes)
                for lease in await db.scalars(select(GatewayLease))
            }
        assert leases == {first.id: (3_000_000, 3_000_000), second.id: (7_000_000, 0)}

    async def test_two_carriers_never_hold_more_than_remains(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        first, second = await world.gateway(), await world.gateway()
        session_id = await world.session(limit_bytes=10_000_000)
        await world.device(session_id, first.id)
        await world.device(session_id, second.id)
        [first_peer] = (await fetch_state(client, first)).peers
        [second_peer] = (await fetch_state(client, second)).peers
        assert first_peer.quota_bytes == second_peer.quota_bytes == 5_000_000
        ack = await post_usage(client, first, usage_report(1, (session_id, 4_000_000, 0)))
        # remaining 6 MB; the second gateway holds 5 MB: the first may hold 1 MB more.
        assert [(grant.session_id, grant.quota_bytes) for grant in ack.leases] == [
            (session_id, 5_000_000)
        ]


class TestLongPoll:
    async def test_wakes_soon_after_a_bump(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        ctx.settings.longpoll_seconds = 10
        gateway = await world.gateway()
        revision = (await fetch_state(client, gateway)).revision
        started = time.monotonic()
        waiting = asyncio.create_task(fetch_state(client, gateway, since=revision))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        session_id = await world.session()
        device = await world.device(session_id, gateway.id)  # bumps the revision on commit
        state = await asyncio.wait_for(waiting, 1.5)
        assert state.revision == revision + 1
        assert [peer.public_key for peer in state.peers] == [device.public_key]
        assert time.monotonic() - started < 2

    async def test_times_out_with_the_same_revision(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        ctx.settings.longpoll_seconds = 0.5
        gateway = await world.gateway()
        revision = (await fetch_state(client, gateway)).revision
        started = time.monotonic()
        state = await fetch_state(client, gateway, since=revision)
        elapsed = time.monotonic() - started
        assert state.revision == revision
        assert 0.45 <= elapsed < 2

    async def test_bad_since_is_422(self, client: httpx.AsyncClient, world: World) -> None:
        gateway = await world.gateway()
        for since in ("-1", "soon"):
            response = await client.get(STATE, headers=gateway.headers, params={"since": since})
            assert response.status_code == 422
            assert response.json()["error"]["code"] == "validation_error"

    async def test_other_revisions_answer_at_once(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        ctx.settings.longpoll_seconds = 10
        gateway = await world.gateway()
        revision = (await fetch_state(client, gateway)).revision
        for since in (revision - 1, revision + 5):  # older, or newer after a database restore
            started = time.monotonic()
            assert (await fetch_state(client, gateway, since=since)).revision == revision
            assert time.monotonic() - started < 1

    async def test_another_gateways_bump_does_not_wake(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        ctx.settings.longpoll_seconds = 1
        gateway, other = await world.gateway(), await world.gateway()
        revision = (await fetch_state(client, gateway)).revision
        waiting = asyncio.create_task(fetch_state(client, gateway, since=revision))
        await asyncio.sleep(0.2)
        async with ctx.db.transaction() as db:
            await gateway_desired.bump_revision(db, [other.id], ctx.events)
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert (await waiting).revision == revision

    async def test_waiting_holds_no_database_transaction(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        ctx.settings.longpoll_seconds = 5
        gateway = await world.gateway()
        revision = (await fetch_state(client, gateway)).revision
        waiters = [
            asyncio.create_task(fetch_state(client, gateway, since=revision)) for _ in range(3)
        ]
        await asyncio.sleep(0.3)
        # Writes go through promptly while three agents wait (SQLite has a single writer).
        started = time.monotonic()
        await asyncio.wait_for(world.gateway(), 2)
        assert time.monotonic() - started < 1.5
        async with ctx.db.transaction() as db:
            await gateway_desired.bump_revision(db, [gateway.id], ctx.events)
        states = await asyncio.wait_for(asyncio.gather(*waiters), 2)
        assert {state.revision for state in states} == {revision + 1}


class TestUsage:
    async def test_applied_once(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        gateway = await world.gateway()
        session_id = await world.session(limit_bytes=10_000_000)
        await world.device(session_id, gateway.id)
        body = usage_report(1, (session_id, 100, 200), (session_id, 1, 2))
        ack = await post_usage(client, gateway, body)
        assert (ack.accepted, ack.duplicate, ack.last_sequence) == (True, False, 1)
        replay = await post_usage(client, gateway, body)
        assert (replay.accepted, replay.duplicate, replay.last_sequence) == (False, True, 1)

        session = await world.get_session(session_id)
        assert (session.used_bytes, session.rx_bytes, session.tx_bytes) == (303, 101, 202)
        stored = await world.get_gateway(gateway.id)
        assert stored.last_usage_sequence == 1
        async with ctx.db.transaction() as db:
            [batch] = await db.scalars(select(UsageBatch))
            [lease] = await db.scalars(select(GatewayLease))
        assert (batch.sequence, batch.total_bytes, batch.delta_count) == (1, 303, 1)
        assert lease.used_bytes == 303

    async def test_gaps_accepted_older_sequences_are_duplicates(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        gateway = await world.gateway()
        session_id = await world.session()
        await world.device(session_id, gateway.id)
        assert (await post_usage(client, gateway, usage_report(5, (session_id, 10, 0)))).accepted
        older = await post_usage(client, gateway, usage_report(3, (session_id, 10, 0)))
        assert older.duplicate and older.last_sequence == 5
        assert (await post_usage(client, gateway, usage_report(6, (session_id, 10, 0)))).accepted
        assert (await world.get_session(session_id)).used_bytes == 20

    async def test_concurrent_replays_apply_once(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        gateway = await world.gateway()
        session_id = await world.session()
        await world.device(session_id, gateway.id)
        body = usage_report(1, (session_id, 1000, 0))
        acks = await asyncio.gather(*(post_usage(client, gateway, body) for _ in range(5)))
        assert sorted(ack.duplicate for ack in acks) == [False, True, True, True, True]
        assert (await world.get_session(session_id)).used_bytes == 1000

    async def test_exhaustion_ends_the_session_and_moves_the_peer_to_the_garden(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        gateway = await world.gateway()
        session_id = await world.session(limit_bytes=1000)
        await world.device(session_id, gateway.id)
        revision = (await fetch_state(client, gateway)).revision
        waiting = asyncio.create_task(fetch_state(client, gateway, since=revision))
        await asyncio.sleep(0.2)
        ack = await post_usage(client, gateway, usage_report(1, (session_id, 600, 400)))
        assert ack.accepted and ack.leases == []
        session = await world.get_session(session_id)
        assert session.status == "exhausted"
        assert session.used_bytes == 1000
        state = await asyncio.wait_for(waiting, 1.5)
        assert state.revision == revision + 1
        [peer] = state.peers
        assert peer.session_id is None and peer.quota_bytes == 0  # same keys, no data

    async def test_the_kernel_saying_exhausted_ends_the_session(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        gateway = await world.gateway()
        session_id = await world.session(limit_bytes=10_000)
        await world.device(session_id, gateway.id)
        await post_usage(client, gateway, usage_report(1, (session_id, 9_000, 900), exhausted=True))
        assert (await world.get_session(session_id)).status == "exhausted"

    async def test_other_gateways_sessions_are_refused(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        owner, intruder = await world.gateway(), await world.gateway()
        session_id = await world.session()
        mine = await world.session()
        await world.device(session_id, owner.id)
        await world.device(mine, intruder.id)
        ack = await post_usage(
            client, intruder, usage_report(1, (session_id, 5000, 5000), (mine, 10, 0))
        )
        assert ack.accepted
        assert (await world.get_session(session_id)).used_bytes == 0
        assert (await world.get_session(mine)).used_bytes == 10
        async with ctx.db.transaction() as db:
            leases = list(
                await db.scalars(select(GatewayLease).where(GatewayLease.session_id == session_id))
            )
        assert leases == []

    async def test_unknown_session_and_bad_bodies(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        gateway = await world.gateway()
        ack = await post_usage(client, gateway, usage_report(1, ("no-such-session", 1, 1)))
        assert ack.accepted
        bad = usage_report(2)
        bad["deltas"] = [{"session_id": "x", "rx_bytes": -1, "tx_bytes": 0}]
        response = await client.post(USAGE, headers=gateway.headers, json=bad)
        assert response.status_code == 422
        response = await client.post(
            USAGE, headers=gateway.headers, json={**usage_report(3), "x": 1}
        )
        assert response.status_code == 422
        assert (await world.get_gateway(gateway.id)).last_usage_sequence == 1

    async def test_odd_session_ids_are_refused_and_never_split_into_others(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        gateway = await world.gateway()
        first, second = sorted([await world.session(), await world.session()])
        await world.device(first, gateway.id)
        await world.device(second, gateway.id)
        odd = [
            f"x,{second}",  # a list separator must not make it two ids, one of them carried
            f"{second},",
            f",{first}",
            f"{first[:16]},{first[16:]}",
            ",",
            "\x00",
            f"{first}\x00",
            "NULL",
            f'{{"{first}"}}',
            f"{first} ",
            '"\\',
        ]
        ack = await post_usage(
            client,
            gateway,
            usage_report(1, *((sid, 5000, 5000) for sid in odd), (second, 10, 0), (second, 1, 2)),
        )
        assert (ack.accepted, ack.last_sequence) == (True, 1)
        assert [grant.session_id for grant in ack.leases] == [second]
        assert (await world.get_session(first)).used_bytes == 0
        assert (await world.get_session(second)).used_bytes == 13
        async with ctx.db.transaction() as db:
            [batch] = await db.scalars(select(UsageBatch))
            leases = {
                lease.session_id: lease.used_bytes
                for lease in await db.scalars(select(GatewayLease))
            }
        assert (batch.delta_count, batch.total_bytes) == (1, 13)
        assert leases == {second: 13}

    async def test_an_empty_report_is_recorded_once(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        gateway = await world.gateway()
        ack = await post_usage(client, gateway, usage_report(1))
        assert (ack.accepted, ack.duplicate, ack.last_sequence, ack.leases) == (True, False, 1, [])
        replay = await post_usage(client, gateway, usage_report(1))
        assert (replay.accepted, replay.duplicate, replay.last_sequence) == (False, True, 1)
        async with ctx.db.transaction() as db:
            [batch] = await db.scalars(select(UsageBatch))
        assert (batch.sequence, batch.delta_count, batch.total_bytes) == (1, 0, 0)
        assert (await world.get_gateway(gateway.id)).last_usage_sequence == 1

    async def test_a_report_of_refused_sessions_only_still_advances_the_sequence(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        owner, other = await world.gateway(), await world.gateway()
        session_id = await world.session()
        await world.device(session_id, owner.id)
        ack = await post_usage(client, other, usage_report(4, (session_id, 9, 9), ("x,y", 1, 1)))
        assert (ack.accepted, ack.last_sequence, ack.leases) == (True, 4, [])
        assert (await world.get_session(session_id)).used_bytes == 0
        async with ctx.db.transaction() as db:
            [batch] = await db.scalars(select(UsageBatch))
            assert list(await db.scalars(select(GatewayLease))) == []
        assert (batch.gateway_id, batch.delta_count, batch.total_bytes) == (other.id, 0, 0)
        assert (await world.get_gateway(other.id)).last_usage_sequence == 4

    async def test_usage_after_the_peer_was_removed_is_still_billed(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        gateway = await world.gateway()
        session_id = await world.session()
        device = await world.device(session_id, gateway.id)
        async with ctx.db.transaction() as db:
            await db.execute(update(Device).where(Device.id == device.id).values(status="removed"))
        await post_usage(client, gateway, usage_report(1, (session_id, 70, 0)))
        assert (await world.get_session(session_id)).used_bytes == 70

    async def test_a_batch_recorded_above_the_last_sequence_is_a_duplicate(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        gateway = await world.gateway()
        session_id = await world.session()
        await world.device(session_id, gateway.id)
        async with ctx.db.transaction() as db:
            db.add(UsageBatch(gateway_id=gateway.id, sequence=7, received_at=utcnow()))
        replay = await post_usage(client, gateway, usage_report(7, (session_id, 10, 0)))
        assert (replay.accepted, replay.duplicate, replay.last_sequence) == (False, True, 0)
        assert (await world.get_session(session_id)).used_bytes == 0
        assert (await world.get_gateway(gateway.id)).last_usage_sequence == 0
        async with ctx.db.transaction() as db:
            assert list(await db.scalars(select(GatewayLease))) == []
        ack = await post_usage(client, gateway, usage_report(8, (session_id, 10, 0)))
        assert (ack.accepted, ack.last_sequence) == (True, 8)
        assert (await world.get_session(session_id)).used_bytes == 10
        assert (await world.get_gateway(gateway.id)).last_usage_sequence == 8

    async def test_every_accepted_session_gets_a_lease_that_counts_its_bytes(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        gateway = await world.gateway()
        idle, busy = await world.session(), await world.session()
        await world.device(idle, gateway.id)
        await world.device(busy, gateway.id)
        await post_usage(client, gateway, usage_report(1, (idle, 0, 0), (busy, 5, 6)))
        await post_usage(client, gateway, usage_report(2, (busy, 1, 0), (busy, 0, 2)))
        async with ctx.db.transaction() as db:
            leases = {
                lease.session_id: lease.used_bytes
                for lease in await db.scalars(select(GatewayLease))
            }
            [batch] = await db.scalars(select(UsageBatch).where(UsageBatch.sequence == 2))
        assert leases == {idle: 0, busy: 14}
        assert (batch.delta_count, batch.total_bytes) == (1, 3)

    async def test_one_publish_per_report_in_session_order(
        self, ctx: AppContext, world: World
    ) -> None:
        published: list[list[Event]] = []

        class RecordingBus(InProcessEventBus):
            async def publish_many(self, events: Sequence[Event]) -> None:
                published.append(list(events))
                await super().publish_many(events)

        bus = RecordingBus()
        gateway = await world.gateway()
        session_ids = sorted([await world.session() for _ in range(3)])
        for session_id in session_ids:
            await world.device(session_id, gateway.id)
        report = UsageReport.model_validate(
            usage_report(1, *((sid, 100, 0) for sid in reversed(session_ids)))
        )
        async with bus.subscribe(session_channel(session_ids[0])) as subscription:
            async with ctx.db.transaction() as db:
                stored = await db.get(Gateway, gateway.id)
                assert stored is not None
                await ingest.apply_usage(db, bus, stored, report, utcnow())
                assert published == []  # nothing before commit
            assert [[channel for channel, _ in events] for events in published] == [
                [session_channel(sid) for sid in session_ids]
            ]
            event = await subscription.get(1.0)
            assert event is not None
            assert (event["type"], event["used_bytes"]) == ("usage", 100)

    async def test_large_reports_are_queried_in_chunks(
        self, client: httpx.AsyncClient, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(control_db, "IN_CHUNK", 2)
        gateway = await world.gateway()
        session_ids = [await world.session(limit_bytes=10_000) for _ in range(5)]
        devices = [await world.device(session_id, gateway.id) for session_id in session_ids]
        ack = await post_usage(
            client, gateway, usage_report(1, *((sid, 10, 5) for sid in session_ids))
        )
        assert sorted(grant.session_id for grant in ack.leases) == sorted(session_ids)
        assert all(grant.quota_bytes == 10_000 for grant in ack.leases)
        for session_id in session_ids:
            assert (await world.get_session(session_id)).used_bytes == 15
        now = utcnow().isoformat()
        body = heartbeat(handshakes={device.public_key: now for device in devices})
        assert (await client.post(HEARTBEAT, headers=gateway.headers, json=body)).status_code == 200
        for session_id in session_ids:
            assert (await world.get_session(session_id)).status == "connected"
        response = await client.post(
            LEASES, headers=gateway.headers, json={"session_ids": session_ids}
        )
        assert len(response.json()["leases"]) == 5


class TestHeartbeat:
    async def test_stores_health_and_first_handshake_connects(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        gateway, other = await world.gateway(), await world.gateway()
        session_id = await world.session()
        device = await world.device(session_id, gateway.id)
        foreign = await world.device(await world.session(), other.id)
        handshake = datetime(2030, 1, 1, tzinfo=UTC)  # in the future: clamped to now
        response = await client.post(
            HEARTBEAT,
            headers=gateway.headers,
            json=heartbeat(
                handshakes={
                    device.public_key: handshake.isoformat(),
                    foreign.public_key: handshake.isoformat(),
                    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=": handshake.isoformat(),
                }
            ),
        )
        assert response.status_code == 200, response.text
        assert response.json()["ok"] is True

        stored = await world.get_gateway(gateway.id)
        assert stored.is_online and stored.last_heartbeat_at is not None
        assert (stored.agent_version, stored.interface_mode, stored.peer_count) == (
            "0.1.0",
            "userspace",
            1,
        )
        assert (stored.rx_bps, stored.tx_bps, stored.applied_revision) == (1000, 2000, 3)
        seen = await world.get_device(device.id)
        assert seen.last_handshake_at is not None and seen.last_handshake_at <= utcnow()
        assert (await world.get_session(session_id)).status == "connected"
        assert (await world.get_device(foreign.id)).last_handshake_at is None
        assert (await world.get_session(foreign.session_id)).status == "active"

    async def test_older_handshake_does_not_go_back(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        gateway = await world.gateway()
        device = await world.device(await world.session(), gateway.id)
        recent = utcnow() - timedelta(seconds=5)
        for at in (recent, recent - timedelta(minutes=5)):
            body = heartbeat(handshakes={device.public_key: at.isoformat()})
            assert (
                await client.post(HEARTBEAT, headers=gateway.headers, json=body)
            ).status_code == 200
        assert (await world.get_device(device.id)).last_handshake_at == recent

    async def test_bad_interface_mode(self, client: httpx.AsyncClient, world: World) -> None:
        gateway = await world.gateway()
        body = heartbeat(interface_mode="carrier-pigeon")
        assert (await client.post(HEARTBEAT, headers=gateway.headers, json=body)).status_code == 422


class TestLeases:
    async def test_grants_only_carried_live_sessions(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        gateway, other = await world.gateway(), await world.gateway()
        carried = await world.session(limit_bytes=4000)
        ended = await world.session(status="revoked")
        elsewhere = await world.session()
        await world.device(carried, gateway.id)
        await world.device(ended, gateway.id)
        await world.device(elsewhere, other.id)
        response = await client.post(
            LEASES,
            headers=gateway.headers,
            json={"session_ids": [carried, ended, elsewhere, "nope", "\x00", f"{carried}\x00"]},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["revision"] == (await world.get_gateway(gateway.id)).revision
        assert body["leases"] == [{"session_id": carried, "quota_bytes": 4000}]

    async def test_shared_session_top_up(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        first, second = await world.gateway(), await world.gateway()
        session_id = await world.session(limit_bytes=1000)
        await world.device(session_id, first.id)
        await world.device(session_id, second.id)

        async def ask(gateway: RegisteredGateway) -> int:
            response = await client.post(
                LEASES, headers=gateway.headers, json={"session_ids": [session_id]}
            )
            [grant] = response.json()["leases"]
            return int(grant["quota_bytes"])

        assert await ask(first) == 500
        assert await ask(second) == 500
        await post_usage(client, first, usage_report(1, (session_id, 500, 0)))
        # remaining 500, all held by the second gateway: the first gets nothing more.
        assert await ask(first) == 500
        await post_usage(client, second, usage_report(1, (session_id, 100, 0)))
        # remaining 400: the second holds 400 outstanding; still nothing free for the first.
        assert await ask(first) == 500
        async with ctx.db.transaction() as db:
            leases = list(await db.scalars(select(GatewayLease)))
            session = await db.get(DataSession, session_id)
        assert session is not None
        outstanding = sum(max(0, lease.granted_bytes - lease.used_bytes) for lease in leases)
        assert outstanding <= session.data_limit_bytes - session.used_bytes

    async def test_a_joining_gateway_gets_its_share_once_the_first_applied_the_lowered_lease(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        ctx.settings.longpoll_seconds = 10
        first, second = await world.gateway(), await world.gateway()
        session_id = await world.session(limit_bytes=30_000_000)
        await world.device(session_id, first.id)
        state = await fetch_state(client, first)
        assert state.peers[0].quota_bytes == 30_000_000  # the sole carrier holds it all
        await post_heartbeat(client, first, applied_revision=state.revision)

        await world.device(session_id, second.id)  # a second phone, on another gateway
        state = await fetch_state(client, first)
        async with ctx.events.subscribe(gateway_channel(first.id)) as first_told:
            [peer] = (await fetch_state(client, second)).peers
            assert peer.quota_bytes == 0  # all 30 MB are still the first gateway's to serve
            assert await first_told.get(2.0) == {"type": "leases"}
        # The first gateway's long-poll answers at once: a new revision with half the budget.
        started = time.monotonic()
        lowered = await fetch_state(client, first, since=state.revision)
        assert time.monotonic() - started < 5  # not the 10 s long-poll
        assert lowered.revision > state.revision
        assert lowered.peers[0].quota_bytes == 15_000_000
        # Until the first gateway reports that revision applied, nothing is free.
        assert (await fetch_state(client, second)).peers[0].quota_bytes == 0
        async with ctx.events.subscribe(gateway_channel(second.id)) as second_told:
            await post_heartbeat(client, first, applied_revision=lowered.revision)
            assert await second_told.get(2.0) == {"type": "leases"}
        joined = await fetch_state(client, second)
        assert joined.peers[0].quota_bytes == 15_000_000
        async with ctx.db.transaction() as db:
            leases = {
                lease.gateway_id: (lease.granted_bytes, lease.held_bytes)
                for lease in await db.scalars(select(GatewayLease))
            }
        assert leases == {first.id: (15_000_000, 0), second.id: (15_000_000, 0)}

    async def test_an_idle_gateway_gives_its_whole_unused_lease_to_the_one_in_use(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        first, second = await world.gateway(), await world.gateway()
        session_id = await world.session(limit_bytes=10_000_000)
        await world.device(session_id, first.id)
        await world.device(session_id, second.id)
        for gateway in (first, second):
            state = await fetch_state(client, gateway)
            await post_heartbeat(client, gateway, applied_revision=state.revision)
        await post_usage(client, first, usage_report(1, (session_id, 1_000_000, 0)))
        # The first phone went quiet: nothing served through its gateway for a while.
        quiet_since = utcnow() - timedelta(seconds=leases.IDLE_SECONDS + 5)
        async with ctx.db.transaction() as db:
            await db.execute(
                update(GatewayLease)
                .where(GatewayLease.gateway_id == first.id)
                .values(served_at=quiet_since)
            )
        # The second phone used its half and asks for more.
        await post_usage(client, second, usage_report(1, (session_id, 5_000_000, 0)))
        lowered = await fetch_state(client, first)
        assert lowered.peers[0].quota_bytes == 1_000_000  # all it did not use goes back
        await post_heartbeat(client, first, applied_revision=lowered.revision)
        [peer] = (await fetch_state(client, second)).peers
        assert peer.quota_bytes == 9_000_000  # 5 MB used + all 4 MB that are left
        assert (await fetch_state(client, first)).peers[0].quota_bytes == 1_000_000  # idle

        # The first phone wakes up: its gateway's kernel drops its packets and says so.
        await post_usage(client, first, usage_report(2, (session_id, 0, 0), exhausted=True))
        lowered = await fetch_state(client, second)
        assert lowered.peers[0].quota_bytes == 7_000_000  # half of the 4 MB left go back
        await post_heartbeat(client, second, applied_revision=lowered.revision)
        assert (await fetch_state(client, first)).peers[0].quota_bytes == 3_000_000

    async def test_usage_on_both_gateways_ends_the_session_exactly_at_its_limit(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        first, second, session_id = await _one_session_on_two_gateways(client, world)
        assert (await fetch_state(client, second)).peers[0].quota_bytes == 500_000
        # Each serves its whole lease, flagged exhausted by its kernel quota.
        await post_usage(
            client, first, usage_report(1, (session_id, 400_000, 100_000), exhausted=True)
        )
        session = await world.get_session(session_id)
        assert session.status == "active"  # the second gateway still holds 500 kB
        await post_usage(
            client, second, usage_report(1, (session_id, 450_000, 50_000), exhausted=True)
        )
        session = await world.get_session(session_id)
        assert (session.used_bytes, session.status) == (1_000_000, "exhausted")

    async def test_a_gateway_that_ran_out_while_budget_is_free_is_topped_up_not_ended(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        """Seen under load: the first gateway's lowered lease is applied and its bytes are
        free, but not yet granted to the second, when the first runs out of its share. The
        session goes on: the free budget tops a gateway up."""
        first, second, session_id = await _one_session_on_two_gateways(client, world)
        # The second gateway never came back for its 500 kB: they are free, leased to nobody.
        await post_usage(
            client, first, usage_report(1, (session_id, 400_000, 100_000), exhausted=True)
        )
        session = await world.get_session(session_id)
        assert (session.used_bytes, session.status) == (500_000, "active")
        async with ctx.db.transaction() as db:
            rows = {
                lease.gateway_id: lease
                for lease in await db.scalars(
                    select(GatewayLease).where(GatewayLease.session_id == session_id)
                )
            }
        reserved = leases.total_reserved(
            leases.Lease(row.granted_bytes, row.used_bytes, row.held_bytes) for row in rows.values()
        )
        assert reserved <= 500_000  # never more than what is left
        # Both serve what is left; the session then ends exactly at its limit.
        for gateway in (first, second):
            await fetch_state(client, gateway)
        await post_usage(client, second, usage_report(1, (session_id, 500_000, 0), exhausted=True))
        session = await world.get_session(session_id)
        assert (session.used_bytes, session.status) == (1_000_000, "exhausted")

    async def test_concurrent_top_ups_of_a_shared_session(
        self, client: httpx.AsyncClient, ctx: AppContext, world: World
    ) -> None:
        gateways = [await world.gateway() for _ in range(3)]
        session_id = await world.session(limit_bytes=9000)
        for gateway in gateways:
            await world.device(session_id, gateway.id)

        async def ask(gateway: RegisteredGateway) -> None:
            response = await client.post(
                LEASES, headers=gateway.headers, json={"session_ids": [session_id]}
            )
            assert response.status_code == 200, response.text

        async def serve(gateway: RegisteredGateway, sequence: int) -> None:
            await post_usage(client, gateway, usage_report(sequence, (session_id, 700, 0)))

        await asyncio.gather(*(ask(gateway) for gateway in gateways for _ in range(4)))
        await asyncio.gather(*(serve(gateway, 1) for gateway in gateways))
        await asyncio.gather(*(ask(gateway) for gateway in gateways for _ in range(4)))
        async with ctx.db.transaction() as db:
            leases = list(await db.scalars(select(GatewayLease)))
            session = await db.get(DataSession, session_id)
        assert session is not None and session.used_bytes == 2100
        outstanding = sum(max(0, lease.granted_bytes - lease.used_bytes) for lease in leases)
        assert outstanding <= session.data_limit_bytes - session.used_bytes
        assert sum(lease.used_bytes for lease in leases) == 2100


class TestRevisionsAndHealth:
    async def test_ending_a_session_bumps_every_carrier(
        self, ctx: AppContext, world: World
    ) -> None:
        first, second, bystander = (
            await world.gateway(),
            await world.gateway(),
            await world.gateway(),
        )
        session_id = await world.session()
        await world.device(session_id, first.id)
        await world.device(session_id, second.id)
        before = {
            g.id: (await world.get_gateway(g.id)).revision for g in (first, second, bystander)
        }
        async with ctx.db.transaction() as db:
            session = await sessions_service.get(db, session_id)
            moved = await sessions_service.end(
                db, ctx.events, session, SessionStatus.REVOKED, "operator", utcnow()
            )
            bumped = await gateway_desired.bump_revision(db, moved, ctx.events)
        assert bumped == {first.id: before[first.id] + 1, second.id: before[second.id] + 1}
        assert (await world.get_gateway(bystander.id)).revision == before[bystander.id]

    async def test_bump_is_published_only_after_commit(self, ctx: AppContext, world: World) -> None:
        from kswifi.control.events import gateway_channel

        gateway = await world.gateway()
        async with ctx.events.subscribe(gateway_channel(gateway.id)) as subscription:
            with pytest.raises(RuntimeError):
                async with ctx.db.transaction() as db:
                    await gateway_desired.bump_revision(db, [gateway.id], ctx.events)
                    raise RuntimeError("rolled back")
            assert await subscription.get(0.2) is None
            async with ctx.db.transaction() as db:
                await gateway_desired.bump_revision(db, [gateway.id], ctx.events)
            assert await subscription.get(1) == {"type": "revision", "revision": 2}

    async def test_mark_offline(self, ctx: AppContext, world: World) -> None:
        fresh, stale, never = await world.gateway(), await world.gateway(), await world.gateway()
        now = utcnow()
        grace = ctx.settings.offline_after_seconds
        async with ctx.db.transaction() as db:
            for gateway_id, seen in (
                (fresh.id, now),
                (stale.id, now - timedelta(seconds=grace + 1)),
            ):
                await db.execute(
                    update(Gateway)
                    .where(Gateway.id == gateway_id)
                    .values(is_online=True, last_heartbeat_at=seen)
                )
        async with ctx.db.transaction() as db:
            assert await regions.mark_offline_gateways(db, ctx.events, now, ctx.settings) == 1
        async with ctx.db.transaction() as db:
            assert await regions.mark_offline_gateways(db, ctx.events, now, ctx.settings) == 0
        assert (await world.get_gateway(fresh.id)).is_online
        assert not (await world.get_gateway(stale.id)).is_online
        assert not (await world.get_gateway(never.id)).is_online


async def _one_session_on_two_gateways(
    client: httpx.AsyncClient, world: World
) -> tuple[RegisteredGateway, RegisteredGateway, str]:
    """A 1 MB session on a first gateway, then a second: the first applied its lease lowered
    to 500 kB (the other 500 kB are the second's to ask for)."""
    first, second = await world.gateway(), await world.gateway()
    session_id = await world.session(limit_bytes=1_000_000)
    await world.device(session_id, first.id)
    await post_heartbeat(
        client, first, applied_revision=(await fetch_state(client, first)).revision
    )
    await world.device(session_id, second.id)
    await fetch_state(client, second)  # lowers the first gateway's lease to 500 kB
    lowered = await fetch_state(client, first)
    await post_heartbeat(client, first, applied_revision=lowered.revision)
    return first, second, session_id
