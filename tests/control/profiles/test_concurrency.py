"""Concurrent generate calls: distinct addresses, the device limits and one device per name
hold under races."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
from sqlalchemy import select

from kswifi.control.deps import AppContext
from kswifi.control.models import Device, Plan, Purchase
from kswifi.control.profiles.config_render import parse_config
from kswifi.control.profiles.service import MAX_PROFILES_PER_PERSON
from kswifi.control.sessions import service as sessions
from tests.control.profiles.conftest import (
    MakeOwner,
    MakeSession,
    Owner,
    RegisteredGateway,
    generate,
)
from tests.control.profiles.qr_decode import decode_data_uri

CALLS = 200


async def many_sessions(ctx: AppContext, user_id: str, count: int) -> list[str]:
    async with ctx.db.transaction() as db:
        plan = await db.scalar(select(Plan).where(Plan.code == "basic"))
        assert plan is not None
        ids = []
        for _ in range(count):
            purchase = Purchase(
                user_id=user_id,
                plan_id=plan.id,
                provider="dev",
                status="paid",
                amount_cents=0,
                currency=plan.currency,
            )
            db.add(purchase)
            await db.flush()
            new = await sessions.create_for_purchase(
                db, user_id=user_id, purchase_id=purchase.id, plan=plan, activation_days=30
            )
            ids.append(new.session.id)
        return ids


class TestConcurrentGeneration:
    async def test_200_concurrent_calls_get_200_distinct_addresses(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        make_owner: MakeOwner,
        gateway: RegisteredGateway,
    ) -> None:
        calls = []
        for _ in range(CALLS // MAX_PROFILES_PER_PERSON):
            person = await make_owner()
            [session_id] = await many_sessions(ctx, person.id, 1)
            calls += [
                generate(client, person, session_id, device_name=f"d{i}")
                for i in range(MAX_PROFILES_PER_PERSON)
            ]
        responses = await asyncio.gather(*calls)
        assert Counter(r.status_code for r in responses) == {200: CALLS}
        configs = [parse_config(decode_data_uri(r.json()["config_qr"])[0]) for r in responses]
        assert len({config.ipv4 for config in configs}) == CALLS
        assert len({config.ipv6 for config in configs}) == CALLS
        async with ctx.db.transaction() as db:
            devices = list(await db.scalars(select(Device)))
        assert len(devices) == CALLS
        assert len({device.host_index for device in devices}) == CALLS
        assert len({device.public_key for device in devices}) == CALLS

    async def test_concurrent_new_devices_respect_the_limit(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        owner: Owner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
    ) -> None:
        session = await make_session(owner.id, "ultra")  # three devices at once
        responses = await asyncio.gather(
            *(generate(client, owner, session.id, device_name=f"d{i}") for i in range(12))
        )
        assert Counter(r.status_code for r in responses) == {200: 10, 409: 2}
        assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {
            "device_limit_reached"
        }
        # The first three installed draw from the session; the others wait their turn.
        assert Counter(r.json()["state"] for r in responses if r.status_code == 200) == {
            "active": 3,
            "waiting": 7,
        }
        async with ctx.db.transaction() as db:
            devices = list(await db.scalars(select(Device)))
        assert len(devices) == MAX_PROFILES_PER_PERSON
        assert sum(device.session_id == session.id for device in devices) == 3

    async def test_concurrent_same_name_makes_one_device(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        owner: Owner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
    ) -> None:
        session = await make_session(owner.id, "ultra")
        responses = await asyncio.gather(
            *(generate(client, owner, session.id, device_name="Phone") for _ in range(8))
        )
        assert Counter(r.status_code for r in responses) == {200: 8}
        assert len({r.json()["connect_id"] for r in responses}) == 1
        async with ctx.db.transaction() as db:
            devices = list(await db.scalars(select(Device)))
        assert len(devices) == 1
