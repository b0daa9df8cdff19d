"""Placement of a new device: explicit region, nearest region, next nearest, least loaded."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from kswifi.control.deps import AppContext
from kswifi.control.errors import Unprocessable
from kswifi.control.geoip import UNKNOWN, ClientLocation, locate_country
from kswifi.control.models import Device, DeviceStatus, Gateway, Region, utcnow
from kswifi.control.profiles import service as profiles
from kswifi.control.regions import service
from kswifi.control.regions.placement import NoGatewayAvailable
from kswifi.control.regions.service import Placement
from tests.control.conftest import MakeSession
from tests.control.regions.conftest import AddGateway

LONDON = locate_country("GB")
NEW_YORK = locate_country("US")
SAO_PAULO = locate_country("BR")
SYDNEY = locate_country("AU")


async def _place(ctx: AppContext, client: ClientLocation, region: str | None = None) -> Placement:
    async with ctx.db.transaction() as db:
        return await service.place(
            db, region=region, client=client, settings=ctx.settings, now=utcnow()
        )


async def _occupy(ctx: AppContext, make_session: MakeSession, gateway: Gateway) -> None:
    """One live device on the gateway (a capacity-1 gateway is then full)."""
    session = await make_session(plan_code="basic")
    async with ctx.db.transaction() as db:
        await profiles.generate_profile(
            db,
            secrets=ctx.secrets,
            settings=ctx.settings,
            bus=ctx.events,
            user_id=session.user_id,
            session_id=session.id,
            region=gateway.region_code,
            device_name="phone",
            now=utcnow(),
        )


class TestDistance:
    @pytest.mark.parametrize(
        ("a", "b", "distance"),
        [
            ("EU", "EU", 0),
            ("EU", "NA", 1),
            ("OC", "AS", 1),
            ("SA", "NA", 1),
            ("AF", "EU", 1),
            ("SA", "EU", 2),
            ("EU", "AS", 2),
            ("OC", "EU", 3),
            ("SA", "AS", 3),
            ("EU", None, None),
        ],
    )
    def test_continent_distance_is_symmetric(
        self, a: str, b: str | None, distance: int | None
    ) -> None:
        assert service.continent_distance(a, b) == distance
        assert service.continent_distance(b, a) == distance

    def test_latency_hints(self) -> None:
        assert service.latency_hint(0) == "Same continent: 20–50 ms"
        assert service.latency_hint(3).endswith("200–300 ms")
        assert service.latency_hint(None) == service.UNKNOWN_LATENCY_HINT


class TestNearest:
    @pytest.mark.parametrize(
        ("client", "expected"),
        [
            (LONDON, "eu-west"),
            (NEW_YORK, "us-east"),
            (SYDNEY, "ap-southeast"),
            (SAO_PAULO, "us-east"),
        ],
    )
    async def test_a_client_lands_in_the_nearest_region(
        self, ctx: AppContext, add_gateway: AddGateway, client: ClientLocation, expected: str
    ) -> None:
        for region in ("us-east", "eu-west", "ap-southeast"):
            await add_gateway(region)
        placement = await _place(ctx, client)
        assert placement.region_code == expected
        assert placement.gateway.region_code == expected
        assert placement.reason == "nearest" and placement.note is None

    async def test_least_loaded_gateway_of_the_region(
        self, ctx: AppContext, add_gateway: AddGateway, make_session: MakeSession
    ) -> None:
        busy = await add_gateway("eu-west", capacity=10)
        idle = await add_gateway("eu-west", capacity=10)
        await _occupy(ctx, make_session, busy)
        assert (await _place(ctx, LONDON)).gateway.id == idle.id

    async def test_full_nearest_region_falls_back_to_the_next_nearest_and_says_so(
        self, ctx: AppContext, add_gateway: AddGateway, make_session: MakeSession
    ) -> None:
        full = await add_gateway("eu-west", capacity=1)
        await add_gateway("us-east")
        await add_gateway("ap-southeast")
        await _occupy(ctx, make_session, full)
        placement = await _place(ctx, LONDON)
        assert placement.region_code == "us-east"  # across the Atlantic, not to Singapore
        assert placement.reason == "fallback" and placement.nearest_region == "eu-west"
        assert placement.note is not None and "eu-west" in placement.note

    async def test_offline_gateways_are_avoided(
        self, ctx: AppContext, add_gateway: AddGateway
    ) -> None:
        await add_gateway("eu-west", online=False)
        await add_gateway("us-east")
        placement = await _place(ctx, LONDON)
        assert placement.region_code == "us-east" and placement.reason == "fallback"

    async def test_online_gateway_of_a_farther_tier_beats_none(
        self, ctx: AppContext, add_gateway: AddGateway
    ) -> None:
        await add_gateway("ap-southeast")
        placement = await _place(ctx, SAO_PAULO)  # us-east (nearest) has no gateway at all
        assert placement.region_code == "ap-southeast"
        assert placement.nearest_region == "us-east"

    async def test_inactive_regions_are_skipped(
        self, ctx: AppContext, add_gateway: AddGateway
    ) -> None:
        await add_gateway("eu-west")
        await add_gateway("us-east")
        async with ctx.db.transaction() as db:
            region = await db.get(Region, "eu-west")
            assert region is not None
            region.is_active = False
        assert (await _place(ctx, LONDON)).region_code == "us-east"

    async def test_unknown_client_goes_to_the_least_loaded_region(
        self, ctx: AppContext, add_gateway: AddGateway, make_session: MakeSession
    ) -> None:
        busy = await add_gateway("ap-southeast", capacity=10)
        await add_gateway("eu-west", capacity=10)
        await _occupy(ctx, make_session, busy)
        placement = await _place(ctx, UNKNOWN)
        assert placement.region_code == "eu-west" and placement.reason == "least_loaded"

    async def test_no_gateway_anywhere_is_503(self, ctx: AppContext) -> None:
        with pytest.raises(NoGatewayAvailable):
            await _place(ctx, LONDON)


class TestExplicit:
    async def test_an_explicit_region_is_honoured_even_when_far(
        self, ctx: AppContext, add_gateway: AddGateway
    ) -> None:
        await add_gateway("eu-west")
        await add_gateway("ap-southeast")
        placement = await _place(ctx, LONDON, region="ap-southeast")
        assert placement.region_code == "ap-southeast" and placement.reason == "requested"

    async def test_an_explicit_region_without_room_is_refused_not_moved(
        self, ctx: AppContext, add_gateway: AddGateway
    ) -> None:
        await add_gateway("eu-west")
        with pytest.raises(NoGatewayAvailable):
            await _place(ctx, LONDON, region="us-east")

    @pytest.mark.parametrize("region", ["mars-north", "eu-west"])
    async def test_unknown_or_inactive_region_is_422(
        self, ctx: AppContext, add_gateway: AddGateway, region: str
    ) -> None:
        await add_gateway("eu-west")
        async with ctx.db.transaction() as db:
            row = await db.get(Region, "eu-west")
            assert row is not None
            row.is_active = False
        with pytest.raises(Unprocessable) as error:
            await _place(ctx, LONDON, region=region)
        assert "us-east" in error.value.message


async def test_each_gateways_kept_up_count_is_its_installed_devices(
    ctx: AppContext, add_gateway: AddGateway, make_session: MakeSession
) -> None:
    """Placement reads `installed_devices` instead of counting devices: new devices, a device
    moved off a gateway that went offline, and removals all keep it exact."""
    first = await add_gateway("eu-west", capacity=10)
    second = await add_gateway("eu-west", capacity=10)

    async def generate(user_id: str, session_id: str) -> str:
        async with ctx.db.transaction() as db:
            made = await profiles.generate_profile(
                db, secrets=ctx.secrets, settings=ctx.settings, bus=ctx.events,
                user_id=user_id, session_id=session_id, region="eu-west",
                device_name="phone", now=utcnow(),
            )  # fmt: skip
            return made.connect_id

    sessions = [await make_session(plan_code="basic") for _ in range(5)]
    devices = [await generate(s.user_id, s.id) for s in sessions]
    async with ctx.db.transaction() as db:  # the first gateway goes silent: its devices move
        await db.execute(
            update(Gateway)
            .where(Gateway.id == first.id)
            .values(is_online=False, last_heartbeat_at=utcnow() - timedelta(hours=1))
        )
    moved = await generate(sessions[0].user_id, sessions[0].id)
    assert moved == devices[0]
    for session, device in list(zip(sessions, devices, strict=True))[1:3]:
        async with ctx.db.transaction() as db:
            await profiles.remove_profile(
                db, ctx.events, user_id=session.user_id, device_id=device, now=utcnow()
            )
    async with ctx.db.transaction() as db:
        counted = dict(
            (
                await db.execute(
                    select(Device.gateway_id, func.count())
                    .where(Device.status == DeviceStatus.ACTIVE)
                    .group_by(Device.gateway_id)
                )
            ).all()
        )
        kept = dict((await db.execute(select(Gateway.id, Gateway.installed_devices))).all())
    assert sum(counted.values()) == 3
    assert {first.id: kept[first.id], second.id: kept[second.id]} == {
        first.id: counted.get(first.id, 0),
        second.id: counted.get(second.id, 0),
    }
