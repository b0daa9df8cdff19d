"""Account mail end to end with a real SMTP server: sign-up that tells nothing, address
confirmation before the first login, password reset, password and e-mail changes."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import update

from kswifi.control.config import Settings
from kswifi.control.deps import AppContext
from kswifi.control.models import AccountToken, utcnow
from kswifi.control.worker import Worker
from tests.control.users.conftest import refresh_rows, user_row
from tests.mailsink import MailSink, Received

PASSWORD = "correct horse 42"
LINK = re.compile(r"http://testserver(/[\w\-/?=.~%]+)")


@pytest.fixture
def settings(settings: Settings, smtp: MailSink) -> Settings:
    """A mail server is configured, so new accounts must confirm their address."""
    return settings.model_copy(update={"smtp_url": SecretStr(smtp.url)})


async def deliver(ctx: AppContext, smtp: MailSink, count: int) -> list[Received]:
    before = len(smtp.received)
    await Worker(ctx).deliver_mail(utcnow())
    return smtp.wait_for(before + count)[before:]


def link_in(received: Received) -> str:
    match = LINK.search(received.text)
    assert match, received.text
    assert match.group(0) in received.html
    return match.group(1)


def token_of(path: str) -> str:
    return path.split("?")[0].rstrip("/").rsplit("/", 1)[1]


async def register(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD
) -> httpx.Response:
    return await client.post("/api/auth/register", json={"email": email, "password": password})


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/api/auth/login", json={"email": email, "password": password})


async def verified_user(
    client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink, email: str
) -> None:
    await register(client, email)
    (letter,) = await deliver(ctx, smtp, 1)
    confirmed = await client.post(
        "/api/auth/verify-email", json={"token": token_of(link_in(letter))}
    )
    assert confirmed.status_code == 200, confirmed.text


class TestSignUp:
    async def test_new_and_existing_addresses_get_the_same_answer_and_different_mail(
        self, client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink
    ) -> None:
        await verified_user(client, ctx, smtp, "known@example.com")
        known = await register(client, "known@example.com", "someone else's")
        new = await register(client, "fresh@example.com")
        assert known.status_code == new.status_code == 202
        assert known.json()["detail"].replace("known", "X") == new.json()["detail"].replace(
            "fresh", "X"
        )
        letters = {r.recipients[0]: r for r in await deliver(ctx, smtp, 2)}
        assert letters["known@example.com"].message["Subject"] == (
            "You already have a KSWiFi Connect account"
        )
        assert "/password-reset" in letters["known@example.com"].text
        assert letters["fresh@example.com"].message["Subject"] == (
            "Confirm your e-mail for KSWiFi Connect"
        )
        assert (await login(client, "known@example.com")).status_code == 200

    async def test_an_unconfirmed_account_is_refused_like_a_wrong_password_until_confirmed(
        self, client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink
    ) -> None:
        await register(client, "new@example.com")
        unconfirmed = await login(client, "new@example.com")
        wrong = await login(client, "nobody@example.com")
        assert unconfirmed.status_code == wrong.status_code == 401
        assert unconfirmed.json() == wrong.json()
        (letter,) = await deliver(ctx, smtp, 1)
        path = link_in(letter)
        assert path.startswith("/verify-email/")
        page = await client.get(path)
        assert page.status_code == 303 and page.headers["location"] == "/login?notice=verified"
        assert (await login(client, "new@example.com")).status_code == 200
        again = await client.get(path)
        assert again.status_code == 400 and "no longer works" in again.text

    async def test_a_lost_confirmation_link_can_be_sent_again(
        self, client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink
    ) -> None:
        await register(client, "lost@example.com")
        await deliver(ctx, smtp, 1)
        for email in ("lost@example.com", "nobody@example.com"):
            response = await client.post("/api/auth/verify-email/resend", json={"email": email})
            assert response.status_code == 202
        (letter,) = await deliver(ctx, smtp, 1)
        assert letter.recipients == ["lost@example.com"]
        token = token_of(link_in(letter))
        assert (
            await client.post("/api/auth/verify-email", json={"token": token})
        ).status_code == 200


class TestPasswordReset:
    async def test_reset_by_link_changes_the_password_once_and_ends_every_login(
        self, client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink
    ) -> None:
        await verified_user(client, ctx, smtp, "ana@example.com")
        old_login = (await login(client, "ana@example.com")).json()
        known = await client.post("/api/auth/password-reset", json={"email": "ANA@example.com"})
        unknown = await client.post("/api/auth/password-reset", json={"email": "zed@example.com"})
        assert known.status_code == unknown.status_code == 202
        assert known.json()["detail"].replace("ana", "X") == unknown.json()["detail"].replace(
            "zed", "X"
        )
        (letter,) = await deliver(ctx, smtp, 1)
        assert letter.recipients == ["ana@example.com"]
        assert letter.message["Subject"] == "Reset your KSWiFi Connect password"
        assert "30 minutes" in letter.text
        token = token_of(link_in(letter))
        body = {"token": token, "password": "a brand new secret"}
        done = await client.post("/api/auth/password-reset/confirm", json=body)
        assert done.status_code == 200, done.text
        assert (await login(client, "ana@example.com")).status_code == 401
        assert (await login(client, "ana@example.com", "a brand new secret")).status_code == 200
        old = await client.post(
            "/api/auth/refresh", json={"refresh_token": old_login["refresh_token"]}
        )
        assert old.status_code == 401
        reused = await client.post("/api/auth/password-reset/confirm", json=body)
        assert reused.status_code == 400 and reused.json()["error"]["code"] == "invalid_token"
        (changed,) = await deliver(ctx, smtp, 1)
        assert changed.message["Subject"] == "Your KSWiFi Connect password was changed"

    async def test_a_link_older_than_30_minutes_is_refused(
        self, client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink
    ) -> None:
        await verified_user(client, ctx, smtp, "late@example.com")
        await client.post("/api/auth/password-reset", json={"email": "late@example.com"})
        (letter,) = await deliver(ctx, smtp, 1)
        async with ctx.db.transaction() as db:
            await db.execute(
                update(AccountToken).values(expires_at=utcnow() - timedelta(seconds=1))
            )
        body = {"token": token_of(link_in(letter)), "password": "a brand new secret"}
        late = await client.post("/api/auth/password-reset/confirm", json=body)
        assert late.status_code == 400 and late.json()["error"]["code"] == "invalid_token"
        assert (await login(client, "late@example.com")).status_code == 200

    async def test_a_weak_new_password_is_refused_and_the_link_still_works(
        self, client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink
    ) -> None:
        await verified_user(client, ctx, smtp, "weak@example.com")
        await client.post("/api/auth/password-reset", json={"email": "weak@example.com"})
        (letter,) = await deliver(ctx, smtp, 1)
        token = token_of(link_in(letter))
        weak = await client.post(
            "/api/auth/password-reset/confirm", json={"token": token, "password": "password1"}
        )
        assert weak.status_code == 422
        good = await client.post(
            "/api/auth/password-reset/confirm", json={"token": token, "password": "tr0ub4dor &3"}
        )
        assert good.status_code == 200

    async def test_requests_are_limited_per_address_and_mail_per_account(
        self, client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink
    ) -> None:
        await verified_user(client, ctx, smtp, "many@example.com")
        statuses = [
            (
                await client.post("/api/auth/password-reset", json={"email": "many@example.com"})
            ).status_code
            for _ in range(11)
        ]
        assert statuses == [202] * 10 + [429]
        letters = await deliver(ctx, smtp, 3)  # at most three an hour reach the account
        assert all(r.message["Subject"] == "Reset your KSWiFi Connect password" for r in letters)
        await Worker(ctx).deliver_mail(utcnow())
        assert len(smtp.received) == 1 + 3  # the sign-up's confirmation, three resets


class TestChanges:
    async def test_changing_the_password_logs_out_other_devices(
        self, client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink
    ) -> None:
        await verified_user(client, ctx, smtp, "me@example.com")
        other = (await login(client, "me@example.com")).json()
        mine = (await login(client, "me@example.com")).json()
        headers = {"Authorization": f"Bearer {mine['access_token']}"}
        wrong = await client.post(
            "/api/auth/password",
            json={"current_password": "not it", "new_password": "another good one"},
            headers=headers,
        )
        assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "wrong_password"
        changed = await client.post(
            "/api/auth/password",
            json={"current_password": PASSWORD, "new_password": "another good one"},
            headers=headers,
        )
        assert changed.status_code == 200, changed.text
        fresh = changed.json()
        stale = await client.post(
            "/api/auth/refresh", json={"refresh_token": other["refresh_token"]}
        )
        assert stale.status_code == 401
        renewed = await client.post(
            "/api/auth/refresh", json={"refresh_token": fresh["refresh_token"]}
        )
        assert renewed.status_code == 200
        user = await user_row(ctx, "me@example.com")
        assert user is not None
        live = [row for row in await refresh_rows(ctx, user.id) if row.revoked_at is None]
        assert len(live) == 2  # the fresh pair's token, spent by the refresh, and its successor
        (letter,) = await deliver(ctx, smtp, 1)
        assert letter.message["Subject"] == "Your KSWiFi Connect password was changed"

    async def test_changing_the_address_waits_for_the_new_mailbox(
        self, client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink
    ) -> None:
        await verified_user(client, ctx, smtp, "old@example.com")
        tokens = (await login(client, "old@example.com")).json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        asked = await client.post(
            "/api/auth/email",
            json={"password": PASSWORD, "new_email": "New@Example.com"},
            headers=headers,
        )
        assert asked.status_code == 202, asked.text
        assert (await client.get("/api/auth/me", headers=headers)).json()["email"] == (
            "old@example.com"
        )
        (letter,) = await deliver(ctx, smtp, 1)
        assert letter.recipients == ["new@example.com"]
        path = link_in(letter)
        assert path.endswith("?change=1")
        page = await client.get(path)
        assert page.status_code == 303
        assert page.headers["location"] == "/login?notice=email-changed"
        assert (await client.get("/api/auth/me", headers=headers)).json()["email"] == (
            "new@example.com"
        )
        (notice,) = await deliver(ctx, smtp, 1)
        assert notice.recipients == ["old@example.com"]
        assert "new@example.com" in notice.text
        assert (await login(client, "new@example.com")).status_code == 200
