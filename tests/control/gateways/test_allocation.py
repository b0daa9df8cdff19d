"""Placement and addresses: choosing a gateway, race-free allocation, release and cool-down."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from kswifi.control.deps import AppContext
from kswifi.control.errors import Unprocessable
from kswifi.control.gateways import addresses as gateway_addresses
from kswifi.control.gateways import service
from kswifi.control.geoip import UNKNOWN
from kswifi.control.models import AddressRelease, DataSession, Device, Gateway, utcnow
from kswifi.control.profiles import service as profiles
from kswifi.control.regions import placement
from kswifi.control.regions import service as regions
from tests.control.gateways.conftest import World

# Which allocation path `_allocate` takes: the gateway row locked first (`allocate_host`), or
# the single statement that also bumps the revision (`allocate_host_and_bump`, new devices).
_PATHS = ("allocate_host", "allocate_host_and_bump")
_path = {"name": _PATHS[0]}


async def _allocate(ctx: AppContext, gateway_id: str, when: object = None) -> tuple[int, str, str]:
    now = when or utcnow()
    async with ctx.db.transaction() as db:
        if _path["name"] == "allocate_host_and_bump":
            host = await gateway_addresses.allocate_host_and_bump(
                db, gateway_id, ctx.settings, now, ctx.events, user_id="u" * 32
            )  # type: ignore[arg-type]
            return host.host_index, host.ipv4, host.ipv6
        gateway = await db.get(Gateway, gateway_id)
        assert gateway is not None
        return await gateway_addresses.allocate_host(db, gateway, ctx.settings, now)  # type: ignore[arg-type]


class TestAllocate:
    @pytest.fixture(autouse=True, params=_PATHS)
    def path(self, request: pytest.FixtureRequest) -> Iterator[None]:
        _path["name"] = request.param
        yield
        _path["name"] = _PATHS[0]

    async def test_allocate_and_bump_moves_the_revision_once(
        self, ctx: AppContext, world: World
    ) -> None:
        gateway = await world.gateway()
        before = (await world.get_gateway(gateway.id)).revision
        await _allocate(ctx, gateway.id)
        await _allocate(ctx, gateway.id)
        bumps = 2 if _path["name"] == "allocate_host_and_bump" else 0
        assert (await world.get_gateway(gateway.id)).revision == before + bumps

    async def test_sequential_addresses_from_index_two(self, ctx: AppContext, world: World) -> None:
        gateway = await world.gateway()
        assert await _allocate(ctx, gateway.id) == (2, "100.64.0.2", "fd4b:5357:4946::2")
        assert await _allocate(ctx, gateway.id) == (3, "100.64.0.3", "fd4b:5357:4946::3")
        assert (await world.get_gateway(gateway.id)).next_host_index == 4

    async def test_two_gateways_have_separate_blocks(self, ctx: AppContext, world: World) -> None:
        first, second = await world.gateway(), await world.gateway()
        assert (await _allocate(ctx, first.id))[1] == "100.64.0.2"
        assert (await _allocate(ctx, second.id))[1:] == ("100.65.0.2", "fd4b:5357:4946:1::2")

    async def test_released_address_returns_after_cool_down_only(
        self, ctx: AppContext, world: World
    ) -> None:
        gateway = await world.gateway()
        now = utcnow()
        for _ in range(3):
            await _allocate(ctx, gateway.id, now)  # 2, 3, 4
        async with ctx.db.transaction() as db:
            await gateway_addresses.release_host(db, gateway.id, 3, now)
        assert (await _allocate(ctx, gateway.id, now))[0] == 5  # still cooling down
        later = now + timedelta(seconds=ctx.settings.address_cooldown_seconds + 1)
        assert (await _allocate(ctx, gateway.id, later))[0] == 3
        assert (await _allocate(ctx, gateway.id, later))[0] == 6
        async with ctx.db.transaction() as db:
            assert list(await db.scalars(select(AddressRelease))) == []

    async def test_lowest_released_address_first(self, ctx: AppContext, world: World) -> None:
        gateway = await world.gateway()
        earlier = utcnow() - timedelta(days=1)
        for _ in range(4):
            await _allocate(ctx, gateway.id)  # 2..5
        async with ctx.db.transaction() as db:
            await gateway_addresses.release_host(db, gateway.id, 5, earlier)
            await gateway_addresses.release_host(db, gateway.id, 3, earlier)
        assert (await _allocate(ctx, gateway.id))[0] == 3
        assert (await _allocate(ctx, gateway.id))[0] == 5

    async def test_gateway_address_is_not_releasable(self, ctx: AppContext, world: World) -> None:
        gateway = await world.gateway()
        async with ctx.db.transaction() as db:
            with pytest.raises(ValueError, match="not a device address"):
                await gateway_addresses.release_host(db, gateway.id, 1, utcnow())

    async def test_pool_exhaustion_is_a_clear_error(self, ctx: AppContext, world: World) -> None:
        ctx.settings.address_pool_v4_prefix = 29  # 6 usable: the gateway and 5 devices
        gateway = await world.gateway(capacity=5)
        indexes = [(await _allocate(ctx, gateway.id))[0] for _ in range(5)]
        assert indexes == [2, 3, 4, 5, 6]
        async with ctx.db.transaction() as db:
            await gateway_addresses.release_host(db, gateway.id, 4, utcnow())
        with pytest.raises(gateway_addresses.AddressPoolExhausted) as raised:
            await _allocate(ctx, gateway.id)
        assert raised.value.code == "address_pool_exhausted"
        assert raised.value.status_code == 503
        assert "no free address left in 100.64.0.0/29" in raised.value.message
        assert "1 freed address(es) return after the cool-down" in raised.value.message
        assert (await world.get_gateway(gateway.id)).next_host_index == 7

    async def test_200_concurrent_allocations_are_distinct(
        self, ctx: AppContext, world: World
    ) -> None:
        gateway = await world.gateway()
        results = await asyncio.gather(*(_allocate(ctx, gateway.id) for _ in range(200)))
        assert len({index for index, _, _ in results}) == 200
        assert len({v4 for _, v4, _ in results}) == 200
        assert len({v6 for _, _, v6 in results}) == 200
        assert sorted(index for index, _, _ in results) == list(range(2, 202))
        assert (await world.get_gateway(gateway.id)).next_host_index == 202


class TestPlacement:
    """Where a new device goes when nothing tells where its phone is (see
    tests/control/regions/test_placement.py for the nearest-region rules)."""

    async def _choose(self, ctx: AppContext, region: str | None) -> Gateway:
        async with ctx.db.transaction() as db:
            placement = await regions.place(
                db, region=region, client=UNKNOWN, settings=ctx.settings, now=utcnow()
            )
            return placement.gateway

    async def _heartbeat(self, ctx: AppContext, gateway_id: str, seconds_ago: float) -> None:
        async with ctx.db.transaction() as db:
            await db.execute(
                update(Gateway)
                .where(Gateway.id == gateway_id)
                .values(is_online=True, last_heartbeat_at=utcnow() - timedelta(seconds=seconds_ago))
            )

    async def test_least_loaded_of_the_region(self, ctx: AppContext, world: World) -> None:
        busy, idle = await world.gateway("busy"), await world.gateway("idle")
        await world.gateway("elsewhere", region="us-east")
        session_id = await world.session()
        await world.device(session_id, busy.id)
        assert (await self._choose(ctx, "eu-west")).id == idle.id
        assert (await self._choose(ctx, "us-east")).name == "elsewhere"

    async def test_capacity_counts_installed_devices(self, ctx: AppContext, world: World) -> None:
        """Every installed device is a peer (in the garden too); only a removed one frees
        its place."""
        full = await world.gateway("full", capacity=1)
        session_id = await world.session()
        device = await world.device(session_id, full.id)
        with pytest.raises(placement.NoGatewayAvailable) as raised:
            await self._choose(ctx, "eu-west")
        assert raised.value.code == "no_gateway_available"
        assert raised.value.status_code == 503
        async with ctx.db.transaction() as db:
            await db.execute(
                update(DataSession).where(DataSession.id == session_id).values(status="exhausted")
            )
        with pytest.raises(placement.NoGatewayAvailable):
            await self._choose(ctx, "eu-west")
        owner = (await world.get_session(session_id)).user_id
        async with ctx.db.transaction() as db:
            await profiles.remove_profile(
                db, ctx.events, user_id=owner, device_id=device.id, now=utcnow()
            )
        assert (await self._choose(ctx, "eu-west")).id == full.id

    async def test_online_first_then_never_seen_never_offline(
        self, ctx: AppContext, world: World
    ) -> None:
        never_seen = await world.gateway("a-never-seen")
        online = await world.gateway("b-online")
        offline = await world.gateway("c-offline")
        await self._heartbeat(ctx, online.id, 1)
        await self._heartbeat(ctx, offline.id, ctx.settings.offline_after_seconds + 60)
        for _ in range(3):  # online wins even when busier
            await world.device(await world.session(), online.id)
        assert (await self._choose(ctx, "eu-west")).id == online.id
        async with ctx.db.transaction() as db:
            await db.execute(
                update(Gateway).where(Gateway.id == online.id).values(is_enabled=False)
            )
        assert (await self._choose(ctx, "eu-west")).id == never_seen.id
        async with ctx.db.transaction() as db:
            await db.execute(
                update(Gateway).where(Gateway.id == never_seen.id).values(is_enabled=False)
            )
        with pytest.raises(placement.NoGatewayAvailable, match="full or offline"):
            await self._choose(ctx, "eu-west")

    async def test_any_region_when_none_is_given(self, ctx: AppContext, world: World) -> None:
        loaded = await world.gateway("eu", region="eu-west")
        await world.device(await world.session(), loaded.id)
        empty = await world.gateway("ap", region="ap-southeast")
        assert (await self._choose(ctx, None)).id == empty.id

    async def test_no_gateway_at_all(self, ctx: AppContext) -> None:
        with pytest.raises(placement.NoGatewayAvailable, match="in region 'eu-west'"):
            await self._choose(ctx, "eu-west")
        with pytest.raises(placement.NoGatewayAvailable, match="in any region"):
            await self._choose(ctx, None)  # (no region has a gateway)

    async def test_unknown_region(self, ctx: AppContext) -> None:
        with pytest.raises(Unprocessable, match="unknown region"):
            await self._choose(ctx, "mars")

    async def test_public_info(self, ctx: AppContext, world: World) -> None:
        made = await world.gateway("eu")
        async with ctx.db.transaction() as db:
            gateway = await db.get(Gateway, made.id)
            assert gateway is not None
            info = await service.gateway_public_info(db, gateway)
        assert info.endpoint == "eu.example.net:51820"
        assert info.public_key == gateway.public_key
        assert info.region_code == "eu-west"
        assert info.dns_servers and all(info.dns_servers)

    async def test_devices_are_counted(self, ctx: AppContext, world: World) -> None:
        gateway = await world.gateway()
        device = await world.device(await world.session(), gateway.id)
        async with ctx.db.transaction() as db:
            [row] = await service.list_out(db, utcnow(), ctx.settings)
            stored = await db.get(Device, device.id)
        assert row.active_devices == 1
        assert stored is not None and stored.ipv4 == "100.64.0.2"
