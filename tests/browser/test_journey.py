"""The whole journey in Chromium: sign up, buy with a voucher, generate the Connect Code, see
the QR, watch usage move live as the gateway reports bytes, reach "exhausted"; an operator
revokes a session and the person's open page shows it without a reload."""

from __future__ import annotations

import base64
import io
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import zxingcpp
from PIL import Image
from playwright.sync_api import Page, expect

from tests.browser.conftest import DESKTOP, PASSWORD, PHONE, LiveServer

GIB = 1024**3
INSTRUCTIONS = [
    "1. Scan this QR code with your device camera",
    "2. Tap 'Add' when prompted to install profile",
    "3. Enable 'KSWiFi Connect' in your device settings",
    "4. Enjoy secure global internet access!",
]


BLOCKED: list[str] = []
"""What the pages' Content-Security-Policy refused (it must never be something of ours)."""


@pytest.fixture(autouse=True)
def nothing_refused_by_the_content_security_policy() -> Iterator[None]:
    BLOCKED.clear()
    yield
    assert BLOCKED == [], BLOCKED


def new_page(browser: Any, viewport: dict[str, int], base_url: str) -> Page:
    context = browser.new_context(viewport=viewport, base_url=base_url, service_workers="block")
    page: Page = context.new_page()
    page.set_default_timeout(10_000)
    page.on(
        "console",
        lambda message: (
            BLOCKED.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    return page


def sign_up(page: Page) -> str:
    email = f"phone-{uuid.uuid4().hex[:8]}@example.com"
    page.goto("/")
    page.get_by_role("link", name="Get started").click()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("status")).to_contain_text("Almost there: log in")
    expect(page.get_by_label("Email")).to_have_value(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/plans$"))
    return email


def buy(page: Page, plan_name: str, voucher: str) -> str:
    page.goto("/plans")
    page.get_by_role("link", name=f"Buy {plan_name}").click()
    page.get_by_label("Voucher code").fill(voucher)
    page.get_by_role("button", name="Redeem voucher").click()
    expect(page).to_have_url(re.compile(r"/sessions/[0-9a-f]+\?notice=bought$"))
    match = re.search(r"/sessions/([0-9a-f]+)", page.url)
    assert match
    return match.group(1)


def decode_qr(data_uri: str) -> str:
    assert data_uri.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1])))
    results = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
    assert results, "the Connect QR Code does not decode"
    text: str = results[0].text
    return text


def test_sign_up_buy_generate_watch_usage_until_exhausted(
    browser: Any, live_server: LiveServer
) -> None:
    _email, admin = live_server.make_admin()
    live_server.gateway(admin, "eu-west-journey")
    [voucher] = live_server.vouchers(admin, "premium")
    page = new_page(browser, PHONE, live_server.url)

    sign_up(page)
    expect(page.get_by_role("heading", name="Premium Session")).to_be_visible()
    expect(page.get_by_text("720p YouTube, Netflix")).to_be_visible()
    session_id = buy(page, "Premium Session", voucher)
    expect(page.get_by_text("0 GB of 5 GB used")).to_be_visible()

    # Step 2: Generate Connect Code.
    page.get_by_role("link", name="Generate Connect Code").click()
    expect(page.get_by_role("heading", name="KSWiFi Connect Setup")).to_be_visible()
    page.get_by_role("button", name="Generate Connect Code").click()
    expect(page.get_by_text("Your KSWiFi Connect profile is ready")).to_be_visible()
    qr = page.get_by_role("img", name="Connect QR Code")
    expect(qr).to_be_visible()
    assert page.evaluate("document.querySelector('.qr img').naturalWidth") > 100
    # The phone's camera opens the setup link the code holds.
    link = decode_qr(qr.get_attribute("src") or "")
    assert "/setup/" in link
    expect(page.get_by_text("Scan to activate secure internet access")).to_be_visible()
    steps = page.get_by_role("list", name="Setup instructions").get_by_role("listitem")
    expect(steps).to_have_text(INSTRUCTIONS)
    expect(page.locator('[data-field="region"]')).to_have_text("EU West (London)")
    expect(page.get_by_role("link", name="Download for Android or a computer")).to_be_visible()
    expect(page.get_by_role("link", name="Install on iPhone or iPad")).to_be_visible()
    # The config's own code is there for the WireGuard app's scanner.
    page.get_by_text("Using the WireGuard app's own scanner?").click()
    config = decode_qr(
        page.get_by_role("img", name="Code for the WireGuard app").get_attribute("src") or ""
    )
    assert "[Interface]" in config and "PrivateKey = " in config
    # On a phone the setup link is offered instead of scanning one's own screen.
    open_here = page.get_by_role("link", name="Open on this phone")
    expect(open_here).to_be_visible()
    assert (open_here.get_attribute("href") or "").startswith("/setup/")
    assert link.endswith(open_here.get_attribute("href") or "?")

    # Step 4/5: live usage, updated from the event stream without a reload.
    token = live_server.carrier(session_id)
    page.get_by_role("link", name="See live usage").click()
    usage = page.locator("#usage")
    expect(usage).to_have_attribute("data-stream", "open")
    marker = page.evaluate("window.__notReloaded = true")
    assert marker is True

    live_server.handshake(token, session_id)
    started = time.monotonic()
    live_server.report_usage(token, session_id, rx_bytes=GIB, tx_bytes=GIB + GIB // 10)
    expect(page.locator('[data-field="usage_text"]')).to_have_text(
        "2.1 GB of 5 GB used", timeout=1_500
    )
    assert time.monotonic() - started < 1.5
    expect(page.locator('[data-field="status"]')).to_have_text("Connect Profile Active")
    expect(page.locator('[data-field="meter"]')).to_have_attribute("aria-valuenow", "42")
    expect(page.locator('[data-field="speed"]')).not_to_have_text("—")
    expect(page.locator("[data-field=time_left]")).to_contain_text("days")

    live_server.report_usage(token, session_id, rx_bytes=2 * GIB)  # 4.1 GB: past 80 %
    expect(page.get_by_role("alert")).to_contain_text("You have used 80%")
    expect(page.locator('[data-field="usage_text"]')).to_have_text("4.1 GB of 5 GB used")

    live_server.report_usage(token, session_id, rx_bytes=GIB)  # over the limit
    expect(page.locator('[data-field="status"]')).to_have_text("Data used up")
    expect(page.locator('[data-field="usage_text"]')).to_have_text("5 GB of 5 GB used")
    expect(page.get_by_text("This session's data is used up.")).to_be_visible()
    expect(page.get_by_role("link", name="Generate Connect Code")).to_be_hidden()
    assert page.evaluate("window.__notReloaded") is True  # all of it without a reload
    page.context.close()


def test_operator_revokes_and_the_open_page_shows_it(browser: Any, live_server: LiveServer) -> None:
    admin_email, admin = live_server.make_admin()
    [voucher] = live_server.vouchers(admin, "basic")
    phone = new_page(browser, PHONE, live_server.url)
    email = sign_up(phone)
    session_id = buy(phone, "Basic Session", voucher)
    expect(phone.locator("#usage")).to_have_attribute("data-stream", "open")

    console = new_page(browser, DESKTOP, live_server.url)
    console.goto("/admin/sessions")
    expect(console).to_have_url(re.compile(r"/login\?next=/admin/sessions$"))
    console.get_by_label("Email").fill(admin_email)
    console.get_by_label("Password").fill(PASSWORD)
    console.get_by_role("button", name="Log in").click()
    expect(console.get_by_role("heading", name="Operator console")).to_be_visible()
    console.get_by_label("Email or session id").fill(email)
    console.get_by_role("button", name="Search").click()
    row = console.locator(f'tr[data-session-id="{session_id}"]')
    expect(row).to_contain_text("active")
    row.get_by_role("button", name="Revoke").click()
    expect(console.get_by_text("Session revoked.")).to_be_visible()
    expect(console.locator(f'tr[data-session-id="{session_id}"]')).to_contain_text("revoked")

    expect(phone.locator('[data-field="status"]')).to_have_text("Cancelled")
    expect(phone.get_by_text("This session was cancelled.")).to_be_visible()

    console.goto("/admin/audit")
    expect(console.get_by_role("cell", name="session.revoke")).to_be_visible()
    phone.context.close()
    console.context.close()


def test_console_is_not_for_customers(browser: Any, live_server: LiveServer) -> None:
    page = new_page(browser, DESKTOP, live_server.url)
    sign_up(page)
    response = page.goto("/admin")
    assert response is not None and response.status == 404
    expect(page.get_by_role("link", name="Console")).to_have_count(0)
    page.context.close()


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_keyboard_reaches_the_main_actions(
    browser: Any, live_server: LiveServer, viewport: dict[str, int]
) -> None:
    page = new_page(browser, viewport, live_server.url)
    page.goto("/")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent")
    assert focused == "Skip to content"
    page.keyboard.press("Enter")
    seen = []
    for _ in range(12):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("document.activeElement.textContent.trim()"))
    assert "Get started" in seen
    page.context.close()


def test_everything_but_live_updates_works_without_javascript(
    browser: Any, live_server: LiveServer
) -> None:
    _email, admin = live_server.make_admin()
    live_server.gateway(admin, "eu-west-nojs")
    [voucher] = live_server.vouchers(admin, "basic")
    context = browser.new_context(
        viewport=PHONE, base_url=live_server.url, java_script_enabled=False
    )
    page: Page = context.new_page()
    sign_up(page)
    session_id = buy(page, "Basic Session", voucher)
    page.get_by_role("link", name="Generate Connect Code").click()
    page.get_by_role("button", name="Generate Connect Code").click()
    expect(page.get_by_text("Your KSWiFi Connect profile is ready")).to_be_visible()
    expect(page.get_by_role("img", name="Connect QR Code")).to_be_visible()
    live_server.report_usage(live_server.carrier(session_id), session_id, rx_bytes=GIB // 2)
    page.get_by_role("link", name="See live usage").click()
    expect(page.locator('[data-field="usage_text"]')).to_have_text("512 MB of 1 GB used")
    page.get_by_role("button", name="Log out").click()
    expect(
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Log in")
    ).to_be_visible()
    context.close()
