"""In Chromium, with a real SMTP server and the worker delivering: sign up, open the e-mailed
confirmation link, forget the password, reset it by the e-mailed link, log in with it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from pydantic import SecretStr

from tests.browser.conftest import PASSWORD, PHONE, LiveServer, serve_live
from tests.mailsink import MailSink, Received, mail_sink


@pytest.fixture(scope="module")
def sink() -> Iterator[MailSink]:
    with mail_sink() as server:
        yield server


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory, sink: MailSink) -> Iterator[LiveServer]:
    with serve_live(
        tmp_path_factory,
        with_worker=True,
        smtp_url=SecretStr(sink.url),
        support_email="help@kswifi.test",
    ) as server:
        yield server


def link_in(letter: Received, base: str) -> str:
    match = re.search(re.escape(base) + r"/[\w\-/?=.~%]+", letter.text)
    assert match, letter.text
    return match.group(0)


def test_confirm_the_address_then_reset_a_forgotten_password(
    browser: Any, live_server: LiveServer, sink: MailSink
) -> None:
    context = browser.new_context(viewport=PHONE, base_url=live_server.url, service_workers="block")
    page: Page = context.new_page()
    page.set_default_timeout(15_000)
    email = f"mail-{uuid.uuid4().hex[:8]}@example.com"

    page.goto("/signup")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    before = len(sink.received)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("status")).to_contain_text("Check your e-mail")
    expect(page.get_by_text("help@kswifi.test")).to_be_visible()  # the footer names support

    confirm = sink.wait_for(before + 1, timeout=20)[-1]
    assert confirm.recipients == [email]
    assert confirm.message["Subject"] == "Confirm your e-mail for KSWiFi Connect"
    page.goto(link_in(confirm, live_server.url))
    expect(page.get_by_role("status")).to_contain_text("Your e-mail address is confirmed")

    page.get_by_role("link", name="Forgot your password?").click()
    page.get_by_label("Email").fill(email)
    before = len(sink.received)
    page.get_by_role("button", name="Send me a link").click()
    expect(page.get_by_role("status")).to_contain_text(f"If an account exists for {email}")

    reset = sink.wait_for(before + 1, timeout=20)[-1]
    assert reset.message["Subject"] == "Reset your KSWiFi Connect password"
    page.goto(link_in(reset, live_server.url))
    expect(page.get_by_role("heading", name="Choose a new password")).to_be_visible()
    page.get_by_label("New password").fill("password1")
    page.get_by_role("button", name="Save my new password").click()
    expect(page.get_by_role("alert")).to_contain_text("most common")
    page.get_by_label("New password").fill("a fresh start 31")
    page.get_by_role("button", name="Save my new password").click()
    expect(page.get_by_role("status")).to_contain_text("Your password has been changed")

    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("Wrong email or password")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("a fresh start 31")
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/sessions$"))
    context.close()
