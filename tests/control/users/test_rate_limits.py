"""Login and registration rate limits through the API (per account and per address)."""

from __future__ import annotations

import httpx

from kswifi.control.users.ratelimit import ADDRESS_FACTOR, REGISTRATIONS_PER_MINUTE
from tests.conftest import ApiUser
from tests.control.users.conftest import LOGIN_LIMIT, FakeClock

WRONG = "wrong password"


async def login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/api/auth/login", json={"email": email, "password": password})


async def fail_logins(client: httpx.AsyncClient, email: str, times: int) -> None:
    for _ in range(times):
        assert (await login(client, email, WRONG)).status_code == 401


class TestLoginPerAccount:
    async def test_too_many_failures_is_429_with_retry_after(
        self, client: httpx.AsyncClient, user: ApiUser, clock: FakeClock
    ) -> None:
        await fail_logins(client, user.email, LOGIN_LIMIT)
        clock.advance(15)
        response = await login(client, user.email, WRONG)
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "rate_limited"
        assert response.headers["Retry-After"] == "45"
        # even the right password waits: otherwise the limit would only slow down guessing
        blocked = await login(client, user.email, user.password)
        assert blocked.status_code == 429
        assert "access_token" not in blocked.text

    async def test_the_account_limit_ignores_letter_case(
        self, client: httpx.AsyncClient, user: ApiUser, clock: FakeClock
    ) -> None:
        await fail_logins(client, user.email.upper(), LOGIN_LIMIT)
        assert (await login(client, user.email, user.password)).status_code == 429

    async def test_unknown_accounts_are_limited_too(
        self, client: httpx.AsyncClient, clock: FakeClock
    ) -> None:
        await fail_logins(client, "ghost@example.com", LOGIN_LIMIT)
        assert (await login(client, "ghost@example.com", WRONG)).status_code == 429

    async def test_the_window_slides(
        self, client: httpx.AsyncClient, user: ApiUser, clock: FakeClock
    ) -> None:
        await fail_logins(client, user.email, LOGIN_LIMIT)
        assert (await login(client, user.email, user.password)).status_code == 429
        clock.advance(60)
        assert (await login(client, user.email, user.password)).status_code == 200

    async def test_a_success_clears_the_account_failures(
        self, client: httpx.AsyncClient, user: ApiUser, clock: FakeClock
    ) -> None:
        await fail_logins(client, user.email, LOGIN_LIMIT - 1)
        assert (await login(client, user.email, user.password)).status_code == 200
        await fail_logins(client, user.email, LOGIN_LIMIT - 1)
        assert (await login(client, user.email, user.password)).status_code == 200

    async def test_other_accounts_are_not_affected(
        self, client: httpx.AsyncClient, user: ApiUser, clock: FakeClock
    ) -> None:
        await fail_logins(client, "victim@example.com", LOGIN_LIMIT)
        assert (await login(client, user.email, user.password)).status_code == 200

    async def test_validation_errors_are_not_counted(
        self, client: httpx.AsyncClient, user: ApiUser, clock: FakeClock
    ) -> None:
        for _ in range(LOGIN_LIMIT + 2):
            response = await client.post("/api/auth/login", json={"email": user.email})
            assert response.status_code == 422
        assert (await login(client, user.email, user.password)).status_code == 200


class TestLoginPerAddress:
    async def test_spraying_many_accounts_from_one_address_is_limited(
        self, client: httpx.AsyncClient, user: ApiUser, clock: FakeClock
    ) -> None:
        address_limit = LOGIN_LIMIT * ADDRESS_FACTOR
        for index in range(address_limit):
            assert (await login(client, f"spray{index}@example.com", WRONG)).status_code == 401
        response = await login(client, user.email, user.password)
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) == 60
        clock.advance(61)
        assert (await login(client, user.email, user.password)).status_code == 200

    async def test_x_forwarded_for_is_not_trusted(
        self, client: httpx.AsyncClient, user: ApiUser, clock: FakeClock
    ) -> None:
        address_limit = LOGIN_LIMIT * ADDRESS_FACTOR
        for index in range(address_limit):
            response = await client.post(
                "/api/auth/login",
                json={"email": f"spray{index}@example.com", "password": WRONG},
                headers={"X-Forwarded-For": f"198.51.100.{index}"},
            )
            assert response.status_code == 401
        response = await client.post(
            "/api/auth/login",
            json={"email": user.email, "password": user.password},
            headers={"X-Forwarded-For": "203.0.113.9"},
        )
        assert response.status_code == 429


class TestRegistration:
    async def test_registrations_per_address_are_limited(
        self, client: httpx.AsyncClient, clock: FakeClock
    ) -> None:
        for index in range(REGISTRATIONS_PER_MINUTE):
            response = await client.post(
                "/api/auth/register",
                json={"email": f"new{index}@example.com", "password": "long enough"},
            )
            assert response.status_code == 202
        refused = await client.post(
            "/api/auth/register", json={"email": "one-more@example.com", "password": "long enough"}
        )
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
        clock.advance(60)
        allowed = await client.post(
            "/api/auth/register", json={"email": "one-more@example.com", "password": "long enough"}
        )
        assert allowed.status_code == 202
