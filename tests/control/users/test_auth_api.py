"""The auth API: register, login, me, refresh rotation and reuse, logout, token checks."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import httpx
import jwt
import pytest
from sqlalchemy import update

from kswifi.control.deps import AppContext
from kswifi.control.models import RefreshToken
from kswifi.control.security import hash_token, utcnow
from tests.conftest import ApiUser, register_and_login
from tests.control.users.conftest import refresh_rows, signed, user_row

PASSWORD = "correct horse 42"


async def register(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD
) -> httpx.Response:
    return await client.post("/api/auth/register", json={"email": email, "password": password})


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/api/auth/login", json={"email": email, "password": password})


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/api/auth/refresh", json={"refresh_token": token})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


class TestRegister:
    async def test_a_new_account_is_accepted_and_stored(
        self, client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        response = await register(client, "Alice@Example.COM")
        assert response.status_code == 202, response.text
        assert response.json() == {
            "detail": "Check your e-mail: we have sent alice@example.com a message to finish"
            " setting up your account."
        }
        stored = await user_row(ctx, "alice@example.com")
        assert stored is not None and stored.is_admin is False
        assert stored.password_hash.startswith("$argon2id$")
        assert PASSWORD not in stored.password_hash

    async def test_an_existing_address_gets_the_same_answer_and_keeps_its_password(
        self, client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        new = await register(client, "bob@example.com")
        again = await register(client, "BOB@example.com", "another password")
        assert (again.status_code, again.json()) == (new.status_code, new.json())
        assert new.status_code == 202
        assert (await login(client, "bob@example.com")).status_code == 200
        assert (await login(client, "bob@example.com", "another password")).status_code == 401

    async def test_concurrent_registrations_create_one_account(
        self, client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        responses = await asyncio.gather(*(register(client, "race@example.com") for _ in range(5)))
        assert {response.status_code for response in responses} == {202}
        assert len({response.text for response in responses}) == 1
        assert await user_row(ctx, "race@example.com") is not None

    @pytest.mark.parametrize("password", ["password1", "Password", "hunter22", "qwertyuiop"])
    async def test_common_passwords_are_refused(
        self, client: httpx.AsyncClient, ctx: AppContext, password: str
    ) -> None:
        response = await register(client, "weak@example.com", password)
        assert_error(response, 422, "validation_error")
        assert "most common" in response.json()["error"]["message"]
        assert await user_row(ctx, "weak@example.com") is None

    async def test_the_address_itself_is_refused_as_a_password(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await register(client, "someone.long@example.com", "someone.long")
        assert_error(response, 422, "validation_error")

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"email": "not-an-email", "password": PASSWORD}, "email"),
            ({"email": "a@example.com", "password": "short"}, "password"),
            ({"email": "a@example.com", "password": "x" * 257}, "password"),
            ({"email": "a@example.com"}, "password"),
            ({"password": PASSWORD}, "email"),
            ({"email": 42, "password": PASSWORD}, "email"),
            ({"email": "a@example.com", "password": PASSWORD, "is_admin": True}, "is_admin"),
        ],
    )
    async def test_invalid_body_is_422_naming_the_field(
        self, client: httpx.AsyncClient, ctx: AppContext, body: dict[str, object], field: str
    ) -> None:
        response = await client.post("/api/auth/register", json=body)
        assert_error(response, 422, "validation_error")
        assert field in [entry["field"] for entry in response.json()["error"]["fields"]]
        assert await user_row(ctx, "a@example.com") is None

    async def test_garbage_body_is_422(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/api/auth/register", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert_error(response, 422, "validation_error")

    async def test_password_of_exactly_8_and_256_characters_is_accepted(
        self, client: httpx.AsyncClient
    ) -> None:
        assert (await register(client, "eight@example.com", "x" * 8)).status_code == 202
        assert (await register(client, "long@example.com", "y" * 256)).status_code == 202
        assert (await login(client, "long@example.com", "y" * 256)).status_code == 200


class TestLogin:
    async def test_login_returns_bearer_tokens(
        self, client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        await register(client, "carol@example.com")
        created = await user_row(ctx, "carol@example.com")
        assert created is not None
        response = await login(client, "carol@example.com")
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == ctx.settings.access_token_minutes * 60
        claims = ctx.secrets.read_access_token(body["access_token"])
        assert claims.user_id == created.id
        assert claims.is_admin is False

    async def test_refresh_token_is_stored_only_as_its_hash(
        self, client: httpx.AsyncClient, ctx: AppContext, user: ApiUser
    ) -> None:
        me = (await client.get("/api/auth/me", headers=user.headers)).json()
        rows = await refresh_rows(ctx, me["id"])
        assert len(rows) == 1
        assert rows[0].token_hash == hash_token(user.tokens["refresh_token"])
        assert rows[0].token_hash != user.tokens["refresh_token"]
        expected_expiry = utcnow() + timedelta(days=ctx.settings.refresh_token_days)
        assert abs((rows[0].expires_at - expected_expiry).total_seconds()) < 60

    async def test_email_is_case_insensitive(self, client: httpx.AsyncClient) -> None:
        await register(client, "dave@example.com")
        assert (await login(client, "DAVE@Example.com")).status_code == 200

    async def test_wrong_password_and_unknown_email_look_the_same(
        self, client: httpx.AsyncClient
    ) -> None:
        await register(client, "erin@example.com")
        wrong_password = await login(client, "erin@example.com", "wrong password")
        unknown_email = await login(client, "nobody@example.com")
        assert_error(wrong_password, 401, "invalid_credentials")
        assert_error(unknown_email, 401, "invalid_credentials")
        assert wrong_password.json() == unknown_email.json()
        assert "access_token" not in wrong_password.text

    async def test_disabled_account_cannot_log_in(
        self, client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        await register(client, "frank@example.com")
        await _disable(ctx, "frank@example.com")
        assert_error(await login(client, "frank@example.com"), 401, "unauthorized")
        assert_error(await login(client, "frank@example.com", "wrong"), 401, "invalid_credentials")

    async def test_unknown_field_is_422(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/api/auth/login",
            json={"email": "a@example.com", "password": PASSWORD, "remember": True},
        )
        assert_error(response, 422, "validation_error")


class TestMe:
    async def test_returns_the_current_user(self, client: httpx.AsyncClient, user: ApiUser) -> None:
        response = await client.get("/api/auth/me", headers=user.headers)
        assert response.status_code == 200
        body = response.json()
        assert body["email"] == user.email
        assert set(body) == {"id", "email", "is_admin", "email_verified", "created_at"}
        assert body["email_verified"] is True  # no mail server: accounts open at once

    async def test_without_token_is_401(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/auth/me")
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == "Bearer"

    async def test_tampered_token_is_refused(
        self, client: httpx.AsyncClient, user: ApiUser
    ) -> None:
        header, payload, signature = user.tokens["access_token"].split(".")
        claims = jwt.decode(user.tokens["access_token"], options={"verify_signature": False})
        claims["adm"] = True
        forged_payload = jwt.encode(claims, "x" * 32, algorithm="HS256").split(".")[1]
        for token in (
            f"{header}.{forged_payload}.{signature}",
            f"{header}.{payload}.{signature[:-4]}AAAA",
            f"{header}.{payload}.",
            "not-a-jwt",
        ):
            assert_error(
                await client.get("/api/auth/me", headers=bearer(token)), 401, "unauthorized"
            )

    async def test_alg_none_is_refused(self, client: httpx.AsyncClient, user: ApiUser) -> None:
        claims = jwt.decode(user.tokens["access_token"], options={"verify_signature": False})
        token = jwt.encode(claims, None, algorithm="none")
        assert_error(await client.get("/api/auth/me", headers=bearer(token)), 401, "unauthorized")

    async def test_token_signed_with_another_key_is_refused(
        self, client: httpx.AsyncClient, user: ApiUser
    ) -> None:
        claims = jwt.decode(user.tokens["access_token"], options={"verify_signature": False})
        token = jwt.encode(claims, "some-other-key-0123456789abcdef-0123456789", algorithm="HS256")
        assert_error(await client.get("/api/auth/me", headers=bearer(token)), 401, "unauthorized")

    async def test_wrong_type_tokens_are_refused(
        self, client: httpx.AsyncClient, ctx: AppContext, user: ApiUser
    ) -> None:
        claims = jwt.decode(user.tokens["access_token"], options={"verify_signature": False})
        refresh_typed = signed(ctx, {**claims, "typ": "refresh"})
        untyped = signed(ctx, {key: value for key, value in claims.items() if key != "typ"})
        for token in (refresh_typed, untyped, user.tokens["refresh_token"]):
            assert_error(
                await client.get("/api/auth/me", headers=bearer(token)), 401, "unauthorized"
            )

    async def test_expired_token_is_refused(
        self, client: httpx.AsyncClient, ctx: AppContext, user: ApiUser
    ) -> None:
        me = (await client.get("/api/auth/me", headers=user.headers)).json()
        expired = ctx.secrets.issue_access_token(me["id"], False, timedelta(seconds=-120))
        response = await client.get("/api/auth/me", headers=bearer(expired))
        assert_error(response, 401, "unauthorized")
        assert "expired" in response.json()["error"]["message"]

    async def test_token_for_missing_user_is_refused(
        self, client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        token = signed(
            ctx, {"sub": "0" * 32, "typ": "access", "exp": int(time.time()) + 600, "adm": True}
        )
        assert_error(await client.get("/api/auth/me", headers=bearer(token)), 401, "unauthorized")

    async def test_disabled_user_is_refused(
        self, client: httpx.AsyncClient, ctx: AppContext, user: ApiUser
    ) -> None:
        await _disable(ctx, user.email)
        assert_error(await client.get("/api/auth/me", headers=user.headers), 401, "unauthorized")


class TestRefresh:
    async def test_rotation_issues_a_new_pair_in_the_same_family(
        self, client: httpx.AsyncClient, ctx: AppContext, user: ApiUser
    ) -> None:
        response = await refresh(client, user.tokens["refresh_token"])
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["token_type"] == "bearer"
        assert body["refresh_token"] != user.tokens["refresh_token"]
        me = await client.get("/api/auth/me", headers=bearer(body["access_token"]))
        assert me.status_code == 200
        rows = await refresh_rows(ctx, me.json()["id"])
        assert len(rows) == 2
        old, new = sorted(rows, key=lambda row: row.used_at is None)
        assert old.token_hash == hash_token(user.tokens["refresh_token"])
        assert old.used_at is not None and old.revoked_at is None
        assert new.token_hash == hash_token(body["refresh_token"])
        assert new.used_at is None and new.family_id == old.family_id

    async def test_chain_of_rotations_keeps_working(
        self, client: httpx.AsyncClient, user: ApiUser
    ) -> None:
        token = user.tokens["refresh_token"]
        for _ in range(3):
            response = await refresh(client, token)
            assert response.status_code == 200
            token = response.json()["refresh_token"]

    async def test_reuse_revokes_the_whole_family(
        self, client: httpx.AsyncClient, ctx: AppContext, user: ApiUser
    ) -> None:
        first = user.tokens["refresh_token"]
        second = (await refresh(client, first)).json()["refresh_token"]
        reused = await refresh(client, first)
        assert_error(reused, 401, "invalid_refresh_token")
        # the legitimate newest token died with its family
        assert_error(await refresh(client, second), 401, "invalid_refresh_token")
        me = (await client.get("/api/auth/me", headers=user.headers)).json()
        assert all(row.revoked_at is not None for row in await refresh_rows(ctx, me["id"]))

    async def test_reuse_leaves_other_logins_alone(
        self, client: httpx.AsyncClient, user: ApiUser
    ) -> None:
        other_login = (await login(client, user.email, user.password)).json()
        first = user.tokens["refresh_token"]
        await refresh(client, first)
        assert (await refresh(client, first)).status_code == 401
        assert (await refresh(client, other_login["refresh_token"])).status_code == 200

    async def test_concurrent_use_of_one_token_rotates_once(
        self, client: httpx.AsyncClient, user: ApiUser
    ) -> None:
        responses = await asyncio.gather(
            *(refresh(client, user.tokens["refresh_token"]) for _ in range(2))
        )
        assert sorted(response.status_code for response in responses) == [200, 401]
        winner = next(response for response in responses if response.status_code == 200)
        # the second use counted as reuse, so the winner's new token was revoked too
        assert (await refresh(client, winner.json()["refresh_token"])).status_code == 401

    async def test_expired_refresh_token_is_401(
        self, client: httpx.AsyncClient, ctx: AppContext, user: ApiUser
    ) -> None:
        async with ctx.db.transaction() as db:
            await db.execute(
                update(RefreshToken)
                .where(RefreshToken.token_hash == hash_token(user.tokens["refresh_token"]))
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
        response = await refresh(client, user.tokens["refresh_token"])
        assert_error(response, 401, "invalid_refresh_token")
        assert "expired" in response.json()["error"]["message"]

    @pytest.mark.parametrize("kind", ["garbage", "access_token"])
    async def test_unknown_tokens_are_401(
        self, client: httpx.AsyncClient, user: ApiUser, kind: str
    ) -> None:
        token = "x" * 43 if kind == "garbage" else user.tokens["access_token"]
        assert_error(await refresh(client, token), 401, "invalid_refresh_token")
        # a wrong guess is not a reuse: the real token still works
        assert (await refresh(client, user.tokens["refresh_token"])).status_code == 200

    async def test_disabled_account_cannot_refresh(
        self, client: httpx.AsyncClient, ctx: AppContext, user: ApiUser
    ) -> None:
        await _disable(ctx, user.email)
        assert_error(
            await refresh(client, user.tokens["refresh_token"]), 401, "invalid_refresh_token"
        )

    async def test_missing_or_extra_fields_are_422(self, client: httpx.AsyncClient) -> None:
        assert_error(await client.post("/api/auth/refresh", json={}), 422, "validation_error")
        response = await client.post(
            "/api/auth/refresh", json={"refresh_token": "x", "user_id": "y"}
        )
        assert_error(response, 422, "validation_error")


class TestLogout:
    async def test_logout_revokes_the_refresh_token(
        self, client: httpx.AsyncClient, ctx: AppContext, user: ApiUser
    ) -> None:
        response = await client.post(
            "/api/auth/logout",
            json={"refresh_token": user.tokens["refresh_token"]},
            headers=user.headers,
        )
        assert response.status_code == 204
        assert response.content == b""
        assert_error(
            await refresh(client, user.tokens["refresh_token"]), 401, "invalid_refresh_token"
        )
        me = (await client.get("/api/auth/me", headers=user.headers)).json()
        rows = await refresh_rows(ctx, me["id"])
        assert [row.revoked_at is not None for row in rows] == [True]

    async def test_logout_after_rotation_ends_the_login(
        self, client: httpx.AsyncClient, user: ApiUser
    ) -> None:
        rotated = (await refresh(client, user.tokens["refresh_token"])).json()
        response = await client.post(
            "/api/auth/logout",
            json={"refresh_token": rotated["refresh_token"]},
            headers=user.headers,
        )
        assert response.status_code == 204
        assert (await refresh(client, rotated["refresh_token"])).status_code == 401

    async def test_logout_is_idempotent(self, client: httpx.AsyncClient, user: ApiUser) -> None:
        for _ in range(2):
            response = await client.post(
                "/api/auth/logout",
                json={"refresh_token": user.tokens["refresh_token"]},
                headers=user.headers,
            )
            assert response.status_code == 204
        unknown = await client.post(
            "/api/auth/logout", json={"refresh_token": "unknown"}, headers=user.headers
        )
        assert unknown.status_code == 204

    async def test_logout_needs_the_access_token(
        self, client: httpx.AsyncClient, user: ApiUser
    ) -> None:
        response = await client.post(
            "/api/auth/logout", json={"refresh_token": user.tokens["refresh_token"]}
        )
        assert_error(response, 401, "unauthorized")
        assert (await refresh(client, user.tokens["refresh_token"])).status_code == 200

    async def test_cannot_log_out_someone_else(
        self, client: httpx.AsyncClient, user: ApiUser
    ) -> None:
        other = await register_and_login(client)
        response = await client.post(
            "/api/auth/logout",
            json={"refresh_token": user.tokens["refresh_token"]},
            headers=other.headers,
        )
        assert response.status_code == 204  # says nothing about whose token it was
        assert (await refresh(client, user.tokens["refresh_token"])).status_code == 200


async def _disable(ctx: AppContext, email: str) -> None:
    from kswifi.control.users import service

    async with ctx.db.transaction() as db:
        found = await service.get_user_by_email(db, email)
        await service.set_disabled(db, found.id, True)
