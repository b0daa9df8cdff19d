"""429 with Retry-After on the four doors an attacker knocks on repeatedly.

Login and registration limits have their detailed tests in tests/control/users; here each of
the four is hit once more end to end, with the answer's shape: status 429, code
`rate_limited`, a whole-seconds Retry-After, and nothing written by the refused request.
"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from kswifi.control.deps import AppContext
from kswifi.control.models import Device, Purchase, User
from kswifi.control.profiles import service as profiles_service
from kswifi.control.purchases import service as purchases_service
from kswifi.control.users.ratelimit import REGISTRATIONS_PER_MINUTE
from tests.hardening.conftest import PASSWORD, World, client_for, make_actor


def assert_limited(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limited"
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    return retry_after


async def count(ctx: AppContext, model: type) -> int:
    async with ctx.db.transaction() as db:
        return int(await db.scalar(select(func.count()).select_from(model)) or 0)


async def test_login(app: object, world: World, ctx: AppContext) -> None:
    async with client_for(app, "198.51.100.7") as http:  # type: ignore[arg-type]
        body = {"email": world.owner.email, "password": "not the password"}
        statuses = [(await http.post("/api/auth/login", json=body)).status_code for _ in range(10)]
        assert statuses == [401] * 10
        assert_limited(await http.post("/api/auth/login", json=body))
        # Even the right password waits now: the account is being guessed at.
        right = {"email": world.owner.email, "password": PASSWORD}
        assert_limited(await http.post("/api/auth/login", json=right))


async def test_registration(app: object, ctx: AppContext) -> None:
    async with client_for(app, "198.51.100.8") as http:  # type: ignore[arg-type]
        for number in range(REGISTRATIONS_PER_MINUTE):
            body = {"email": f"rl-{number}@example.com", "password": PASSWORD}
            assert (await http.post("/api/auth/register", json=body)).status_code == 202
        before = await count(ctx, User)
        body = {"email": "rl-one-too-many@example.com", "password": PASSWORD}
        assert_limited(await http.post("/api/auth/register", json=body))
        assert await count(ctx, User) == before


async def test_voucher_redemption(client: httpx.AsyncClient, ctx: AppContext) -> None:
    buyer = await make_actor(ctx, label="guesser")
    async with ctx.db.transaction() as db:
        [real] = await purchases_service.create_vouchers(
            db, plan_code="basic", count=1, actor="tests"
        )
    for number in range(purchases_service.VOUCHER_FAILURES_PER_MINUTE):
        guess = {"payment_method": "voucher", "voucher_code": f"GUESS-{number:04d}-XXXX"}
        response = await client.post("/api/purchases", json=guess, headers=buyer.headers)
        assert response.status_code == 404, response.text
    before = await count(ctx, Purchase)
    # The limit holds even for a code that works: guessing stops the account for a while.
    assert_limited(
        await client.post(
            "/api/purchases",
            json={"payment_method": "voucher", "voucher_code": real},
            headers=buyer.headers,
        )
    )
    assert await count(ctx, Purchase) == before
    # Other accounts and other ways of paying are not held up.
    other = await make_actor(ctx, label="honest")
    response = await client.post(
        "/api/purchases",
        json={"payment_method": "voucher", "voucher_code": real},
        headers=other.headers,
    )
    assert response.status_code == 201, response.text
    response = await client.post(
        "/api/purchases",
        json={"plan_code": "basic", "payment_method": "dev"},
        headers=buyer.headers,
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_voucher_redemption_through_the_web_checkout_is_limited_too(
    client: httpx.AsyncClient, ctx: AppContext, world: World
) -> None:
    buyer = world.other
    nonce = buyer.csrf_nonce
    headers = {"Cookie": world.cookie(buyer, nonce)}
    for number in range(purchases_service.VOUCHER_FAILURES_PER_MINUTE + 1):
        response = await client.post(
            "/checkout/basic",
            data={
                "payment_method": "voucher",
                "voucher_code": f"WEB-GUESS-{number:04d}",
                "csrf_token": world.csrf(nonce),
            },
            headers=headers,
        )
    assert response.status_code == 429
    assert "try again in" in response.text


async def test_profile_generation(client: httpx.AsyncClient, ctx: AppContext, world: World) -> None:
    limit = profiles_service.GENERATIONS_PER_PERSON_PER_MINUTE
    body = {"session_id": world.owner_session, "device_name": "phone", "rotate": True}
    # The world generated twice for this person already (phone and tablet).
    for _ in range(limit - 2):
        response = await client.post(
            "/api/connect/generate-profile", json=body, headers=world.owner.headers
        )
        assert response.status_code == 200, response.text
    async with ctx.db.transaction() as db:
        key = await db.scalar(select(Device.public_key).where(Device.id == world.owner_phone.id))
    assert_limited(
        await client.post("/api/connect/generate-profile", json=body, headers=world.owner.headers)
    )
    async with ctx.db.transaction() as db:  # the refused call rotated nothing
        assert (
            await db.scalar(select(Device.public_key).where(Device.id == world.owner_phone.id))
            == key
        )
    # Another person is not held up.
    response = await client.post(
        "/api/connect/generate-profile",
        json={"session_id": world.other_session, "region": "eu-west", "device_name": "x"},
        headers=world.other.headers,
    )
    assert response.status_code == 200, response.text
