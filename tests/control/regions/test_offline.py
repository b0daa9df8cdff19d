"""A gateway going offline: its devices' usage streams are told, new profiles avoid it, and
regenerating a device moves it to a healthy gateway of its region, keeping the session."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import select, update

from kswifi.control.deps import AppContext
from kswifi.control.events import session_channel
from kswifi.control.gateways import addresses as gateway_addresses
from kswifi.control.gateways import desired as gateway_desired
from kswifi.control.models import AddressRelease, DataSession, Device, Gateway, utcnow
from kswifi.control.worker import Worker
from tests.conftest import ApiUser
from tests.control.conftest import MakeSession
from tests.control.regions.conftest import COUNTRY_HEADER, AddGateway


async def _buy(client: httpx.AsyncClient, user: ApiUser, plan: str = "ultra") -> str:
    bought = await client.post(
        "/api/purchases", json={"plan_code": plan, "payment_method": "dev"}, headers=user.headers
    )
    assert bought.status_code in (200, 201), bought.text
    session_id: str = bought.json()["session_id"]
    return session_id


async def _generate(
    client: httpx.AsyncClient, user: ApiUser, session_id: str, **extra: str
) -> httpx.Response:
    country = extra.pop("country", "GB")
    return await client.post(
        "/api/connect/generate-profile",
        json={"session_id": session_id, "device_name": "phone", **extra},
        headers={**user.headers, COUNTRY_HEADER: country},
    )


async def _silence(ctx: AppContext, gateway_id: str) -> None:
    async with ctx.db.transaction() as db:
        await db.execute(
            update(Gateway)
            .where(Gateway.id == gateway_id)
            .values(last_heartbeat_at=utcnow() - timedelta(minutes=5))
        )


async def _peers(ctx: AppContext, gateway_id: str) -> list[str]:
    async with ctx.db.transaction() as db:
        state = await gateway_desired.desired_state(db, ctx.secrets, gateway_id, utcnow())
    return [peer.session_id for peer in state.peers]


class TestPlacementThroughTheApi:
    async def test_nearest_region_from_the_callers_country(
        self, client: httpx.AsyncClient, user: ApiUser, add_gateway: AddGateway
    ) -> None:
        for region in ("us-east", "eu-west", "ap-southeast"):
            await add_gateway(region)
        for country, region in (("GB", "eu-west"), ("US", "us-east"), ("SG", "ap-southeast")):
            session_id = await _buy(client, user, "basic")
            response = await _generate(
                client, user, session_id, country=country, device_name=f"phone in {country}"
            )
            assert response.status_code == 200, response.text
            assert response.json()["region"] == region
            assert response.json()["region_note"] is None

    async def test_full_nearest_region_is_named_in_the_response(
        self, client: httpx.AsyncClient, user: ApiUser, add_gateway: AddGateway
    ) -> None:
        await add_gateway("us-east")
        response = await _generate(client, user, await _buy(client, user), country="GB")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["region"] == "us-east"
        assert "eu-west" in body["region_note"] and "us-east" in body["region_note"]

    async def test_explicit_region_without_a_gateway_is_503(
        self, client: httpx.AsyncClient, user: ApiUser, add_gateway: AddGateway
    ) -> None:
        await add_gateway("us-east")
        response = await _generate(client, user, await _buy(client, user), region="eu-west")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "no_gateway_available"


class TestGatewayOffline:
    async def test_worker_tells_each_session_on_the_gateway_once(
        self, ctx: AppContext, add_gateway: AddGateway, make_session: MakeSession
    ) -> None:
        gateway = await add_gateway("eu-west")
        other = await add_gateway("eu-west")
        session = await make_session(plan_code="ultra")
        bystander = await make_session(user_id=session.user_id, plan_code="basic")
        async with ctx.db.transaction() as db:
            for name, target in (("phone", gateway), ("tablet", gateway), ("laptop", other)):
                host, ipv4, ipv6 = await gateway_addresses.allocate_host(
                    db, target, ctx.settings, utcnow()
                )
                db.add(
                    Device(
                        session_id=session.id,
                        user_id=session.user_id,
                        gateway_id=target.id,
                        device_name=name,
                        public_key=f"{name:>43}=",
                        preshared_key_encrypted="x",
                        host_index=host,
                        ipv4=ipv4,
                        ipv6=ipv6,
                    )
                )
        await _silence(ctx, gateway.id)
        async with (
            ctx.events.subscribe(session_channel(session.id)) as events,
            ctx.events.subscribe(session_channel(bystander.id)) as quiet,
        ):
            done = await Worker(ctx).run_due(force=True)
            told = await events.get(1.0)
            assert await events.get(0.2) is None  # once, though two devices sit there
            assert await quiet.get(0.2) is None
            again = await Worker(ctx).run_due(force=True)
            assert await events.get(0.2) is None
        assert done["mark_offline_gateways"] == 1 and again["mark_offline_gateways"] == 0
        assert told is not None
        assert told["type"] == "gateway_offline" and told["gateway"] == gateway.name
        assert told["region"] == "eu-west" and len(told["connect_ids"]) == 2
        assert "EU West" in told["message"] and "VPN" not in told["message"]
        async with ctx.db.transaction() as db:
            row = await db.get(Gateway, gateway.id)
            assert row is not None and row.is_online is False

    async def test_regenerating_moves_the_device_and_keeps_the_session(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        user: ApiUser,
        add_gateway: AddGateway,
    ) -> None:
        first_gateway = await add_gateway("eu-west")
        session_id = await _buy(client, user)
        first = await _generate(client, user, session_id)
        assert first.status_code == 200 and first.json()["gateway"] == first_gateway.name
        second_gateway = await add_gateway("eu-west")
        await _silence(ctx, first_gateway.id)
        await Worker(ctx).run_due(force=True)

        # New profiles avoid the offline gateway.
        fresh = await _generate(
            client, user, await _buy(client, user, "basic"), device_name="tablet"
        )
        assert fresh.json()["gateway"] == second_gateway.name

        async with ctx.db.transaction() as db:
            before = await db.scalar(select(Device).where(Device.id == first.json()["connect_id"]))
            assert before is not None
            old_address, old_host = before.ipv4, before.host_index
        moved = await _generate(client, user, session_id)
        assert moved.status_code == 200, moved.text
        body = moved.json()
        assert body["connect_id"] == first.json()["connect_id"]
        assert body["session_id"] == session_id and body["region"] == "eu-west"
        assert body["gateway"] == second_gateway.name
        assert "no longer works" in body["region_note"]
        async with ctx.db.transaction() as db:
            device = await db.get(Device, body["connect_id"])
            assert device is not None and device.gateway_id == second_gateway.id
            assert device.ipv4 != old_address
            session = await db.get(DataSession, session_id)
            assert session is not None and session.status in ("active", "connected")
            released = await db.get(AddressRelease, (first_gateway.id, old_host))
            assert released is not None
        assert session_id not in await _peers(ctx, first_gateway.id)
        assert session_id in await _peers(ctx, second_gateway.id)
        listed = await client.get("/api/connect/profiles", headers=user.headers)
        assert [
            p["gateway"] for p in listed.json()["profiles"] if p["connect_id"] == body["connect_id"]
        ] == [second_gateway.name]

    async def test_a_healthy_gateway_keeps_its_device_and_address(
        self, client: httpx.AsyncClient, ctx: AppContext, user: ApiUser, add_gateway: AddGateway
    ) -> None:
        gateway = await add_gateway("eu-west")
        await add_gateway("eu-west")
        session_id = await _buy(client, user)
        first = (await _generate(client, user, session_id)).json()
        again = (await _generate(client, user, session_id)).json()
        assert again["gateway"] == first["gateway"] == gateway.name
        assert again["region_note"] is None
        async with ctx.db.transaction() as db:
            device = await db.get(Device, first["connect_id"])
            assert device is not None and device.gateway_id == gateway.id

    async def test_with_no_healthy_gateway_left_in_the_region_it_moves_to_the_nearest(
        self, client: httpx.AsyncClient, ctx: AppContext, user: ApiUser, add_gateway: AddGateway
    ) -> None:
        gateway = await add_gateway("eu-west")
        session_id = await _buy(client, user)
        assert (await _generate(client, user, session_id)).status_code == 200
        await add_gateway("us-east")
        await add_gateway("ap-southeast")
        await _silence(ctx, gateway.id)
        moved = (await _generate(client, user, session_id)).json()
        assert moved["region"] == "us-east"
        assert "eu-west" in moved["region_note"]
