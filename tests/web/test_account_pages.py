"""The account pages: forgotten password by e-mailed link, the check-your-e-mail sign-up,
change password and e-mail, support contacts in the footer, the console's mail log."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from kswifi.control.config import Settings
from kswifi.control.deps import AppContext
from kswifi.control.models import utcnow
from kswifi.control.worker import Worker
from tests.mailsink import MailSink, Received
from tests.web.conftest import PASSWORD, make_admin, post_form, web_login

LINK = re.compile(r"http://testserver(/[\w\-/?=.~%]+)")


@pytest.fixture
def settings(settings: Settings, smtp: MailSink) -> Settings:
    return settings.model_copy(
        update={
            "smtp_url": SecretStr(smtp.url),
            "support_url": "https://help.kswifi.test/",
            "support_email": "help@kswifi.test",
        }
    )


async def deliver(ctx: AppContext, smtp: MailSink, count: int) -> list[Received]:
    before = len(smtp.received)
    await Worker(ctx).deliver_mail(utcnow())
    return smtp.wait_for(before + count)[before:]


def link_in(received: Received) -> str:
    match = LINK.search(received.text)
    assert match, received.text
    return match.group(1)


async def signed_up(client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink, email: str) -> None:
    page = await post_form(client, "/signup", email=email, password=PASSWORD)
    assert page.status_code == 200 and "Check your e-mail" in page.text
    (letter,) = await deliver(ctx, smtp, 1)
    confirmed = await client.get(link_in(letter))
    assert confirmed.headers["location"] == "/login?notice=verified"
    login_page = await client.get(confirmed.headers["location"])
    assert "Your e-mail address is confirmed" in login_page.text


class TestSignUpWithMail:
    async def test_sign_up_answers_alike_and_the_link_opens_the_account(
        self, client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink
    ) -> None:
        await signed_up(client, ctx, smtp, "web@example.com")
        again = await post_form(client, "/signup", email="web@example.com", password="another one!")
        fresh = await post_form(client, "/signup", email="other@example.com", password=PASSWORD)
        strip = re.compile(r'value="[^"]*"|web@example\.com|other@example\.com')
        assert strip.sub("", again.text) == strip.sub("", fresh.text)
        await web_login(client, "web@example.com")
        assert (await client.get("/account")).status_code == 200


class TestPasswordResetPages:
    async def test_forgot_password_to_new_password_by_the_e_mailed_link(
        self, client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink
    ) -> None:
        await signed_up(client, ctx, smtp, "forgot@example.com")
        login_page = await client.get("/login")
        assert 'href="/password-reset"' in login_page.text
        asked = await post_form(client, "/password-reset", email="forgot@example.com")
        unknown = await post_form(client, "/password-reset", email="nobody@example.com")
        assert asked.status_code == unknown.status_code == 200
        assert "If an account exists for forgot@example.com" in asked.text
        (letter,) = await deliver(ctx, smtp, 1)
        assert letter.recipients == ["forgot@example.com"]
        assert "https://help.kswifi.test/" in letter.text and "help@kswifi.test" in letter.text
        path = link_in(letter)
        form = await client.get(path)
        assert form.status_code == 200 and form.headers["cache-control"] == "no-store"
        assert "Choose a new password" in form.text
        weak = await post_form(client, path, password="password1")
        assert weak.status_code == 422 and "most common" in weak.text
        done = await post_form(client, path, password="my new secret 7")
        assert done.status_code == 303
        assert done.headers["location"] == "/login?notice=password-reset"
        relogin = await post_form(
            client, "/login", email="forgot@example.com", password="my new secret 7"
        )
        assert relogin.status_code == 303
        spent = await post_form(client, path, password="yet another one")
        assert spent.status_code == 400 and "expired or was already used" in spent.text
        assert 'href="/password-reset"' in spent.text


class TestAccountSettings:
    async def test_change_password_and_address_from_the_account_page(
        self, client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink
    ) -> None:
        await signed_up(client, ctx, smtp, "acct@example.com")
        await web_login(client, "acct@example.com")
        wrong = await post_form(
            client, "/account", "/account/password", current_password="nope", new_password="x" * 12
        )
        assert wrong.status_code == 422 and "current password is not right" in wrong.text
        changed = await post_form(
            client,
            "/account",
            "/account/password",
            current_password=PASSWORD,
            new_password="the next one 99",
        )
        assert changed.status_code == 303
        page = await client.get(changed.headers["location"])
        assert "Your password has been changed" in page.text  # still logged in here
        (letter,) = await deliver(ctx, smtp, 1)
        assert letter.message["Subject"] == "Your KSWiFi Connect password was changed"
        moved = await post_form(
            client,
            "/account",
            "/account/email",
            new_email="moved@example.com",
            password="the next one 99",
        )
        assert moved.status_code == 200 and "We have sent a link to moved@example.com" in moved.text
        (confirm,) = await deliver(ctx, smtp, 1)
        assert confirm.recipients == ["moved@example.com"]

    async def test_alert_choices_are_saved_from_the_account_page(
        self, client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink
    ) -> None:
        def ticked(html: str) -> set[str]:
            return set(re.findall(r'name="((?:email|push):\w+)"[^>]*\bchecked\b', html))

        await signed_up(client, ctx, smtp, "alerts@example.com")
        await web_login(client, "alerts@example.com")
        page = await client.get("/account")
        assert page.text.count('name="email:') == 6 and page.text.count('name="push:') == 6
        assert len(ticked(page.text)) == 12
        assert 'data-push-key="' in page.text
        saved = await post_form(
            client,
            "/account",
            "/account/alerts",
            **{"email:usage_95": "on", "email:expired": "on", "push:data_used_up": "on"},
        )
        assert saved.status_code == 303
        page = await client.get(saved.headers["location"])
        assert "Your alert choices are saved" in page.text
        assert ticked(page.text) == {"email:usage_95", "email:expired", "push:data_used_up"}

    async def test_deleting_the_account_from_its_page(
        self, client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink
    ) -> None:
        await signed_up(client, ctx, smtp, "leaving@example.com")
        await web_login(client, "leaving@example.com")
        unconfirmed = await post_form(client, "/account", "/account/delete", password=PASSWORD)
        assert unconfirmed.status_code == 422 and "Tick the box" in unconfirmed.text
        gone = await post_form(
            client, "/account", "/account/delete", password=PASSWORD, confirm="yes"
        )
        assert gone.status_code == 200 and "Your account is deleted" in gone.text
        assert (await client.get("/account")).status_code == 303  # logged out
        relogin = await post_form(client, "/login", email="leaving@example.com", password=PASSWORD)
        assert relogin.status_code == 401

    async def test_a_browser_hands_over_its_push_subscription(
        self, client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink
    ) -> None:
        from sqlalchemy import select

        from kswifi.control.models import PushSubscription
        from tests.web.conftest import csrf_from

        await signed_up(client, ctx, smtp, "pushy@example.com")
        await web_login(client, "pushy@example.com")
        token = csrf_from((await client.get("/account")).text)
        subscription = {
            "endpoint": "https://fcm.googleapis.com/fcm/send/device-1",
            "expirationTime": None,
            "keys": {"p256dh": "B" * 87, "auth": "a" * 22},
        }
        refused = await client.post("/account/push", json=subscription)
        assert refused.status_code == 403  # no CSRF header
        done = await client.post(
            "/account/push", json=subscription, headers={"X-CSRF-Token": token}
        )
        assert done.status_code == 204
        garbage = await client.post(
            "/account/push", json={"endpoint": "x"}, headers={"X-CSRF-Token": token}
        )
        assert garbage.status_code == 422
        async with ctx.db.transaction() as db:
            (row,) = list(await db.scalars(select(PushSubscription)))
        assert row.endpoint == subscription["endpoint"]
        gone = await client.post(
            "/account/push/remove",
            json={"endpoint": subscription["endpoint"]},
            headers={"X-CSRF-Token": token},
        )
        assert gone.status_code == 204
        async with ctx.db.transaction() as db:
            assert list(await db.scalars(select(PushSubscription))) == []

    async def test_the_footer_names_support(self, client: httpx.AsyncClient) -> None:
        page = await client.get("/")
        assert 'href="https://help.kswifi.test/"' in page.text
        assert 'href="mailto:help@kswifi.test"' in page.text


class TestConsoleWebhooks:
    async def test_operators_see_the_delivery_log(
        self, client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        from kswifi.control.webhooks import service as webhooks

        async with ctx.db.transaction() as db:
            webhooks.record(db, "gateway.offline", {"gateway": "gw-log"})
        await Worker(ctx).deliver_webhooks(utcnow())  # no URL set: recorded, not sent
        admin = await make_admin(ctx)
        await web_login(client, admin)
        page = await client.get("/admin/webhooks")
        assert page.status_code == 200
        assert "No webhook URL is set" in page.text and "No deliveries." in page.text


class TestConsoleMail:
    async def test_operators_see_what_was_sent(
        self, app: FastAPI, client: httpx.AsyncClient, ctx: AppContext, smtp: MailSink
    ) -> None:
        await post_form(client, "/password-reset", email="nobody@example.com")
        admin = await make_admin(ctx)
        await post_form(client, "/password-reset", email=admin)
        await deliver(ctx, smtp, 1)
        await web_login(client, admin)
        log = await client.get("/admin/mail")
        assert log.status_code == 200
        assert "Reset your KSWiFi Connect password" in log.text
        assert f"smtp://127.0.0.1:{smtp.port}" in log.text
        mail_id = re.search(r'href="/admin/mail/([0-9a-f]{32})"', log.text)
        assert mail_id
        one = await client.get(f"/admin/mail/{mail_id.group(1)}")
        assert admin in one.text and "Reset your KSWiFi Connect password" in one.text
        assert "/password-reset/" not in one.text  # the link is the recipient's alone
        assert "can hold a personal link" in one.text
        assert (await client.get("/admin/mail/" + "0" * 32)).status_code == 404
