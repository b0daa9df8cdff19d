"""The phone's path in Chromium, as each kind of device sees it: the Connect QR Code opens the
setup link, the setup page offers what the device installs (iPhone, iPad, Mac, Android,
desktop), the config's own code is a config `wg-quick strip` accepts, and My devices renames,
shows the code again without new keys, and removes."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import DESKTOP, PASSWORD, PHONE, LiveServer
from tests.browser.test_journey import buy, decode_qr, new_page, sign_up

pytestmark = pytest.mark.browser

AGENTS = {
    "iphone": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "ipad": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like"
    " Gecko) Version/17.4 Safari/605.1.15",  # an iPad's Safari asks for the desktop site
    "mac": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like"
    " Gecko) Chrome/124.0 Safari/537.36",
    "android": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/124.0 Mobile Safari/537.36",
    "desktop": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/124.0 Safari/537.36",
}


def _profile_ready(browser: Any, live_server: LiveServer, device: str) -> tuple[Page, str, str]:
    """A new person with a session and a device; its page, setup link and config."""
    _email, admin = live_server.make_admin()
    live_server.gateway(admin, f"eu-west-{device}")
    [voucher] = live_server.vouchers(admin, "premium")
    page = new_page(browser, PHONE, live_server.url)
    sign_up(page)
    buy(page, "Premium Session", voucher)
    page.get_by_role("link", name="Generate Connect Code").click()
    page.get_by_label("Device name").fill(device)
    page.get_by_role("button", name="Generate Connect Code").click()
    link = decode_qr(page.get_by_role("img", name="Connect QR Code").get_attribute("src") or "")
    page.get_by_text("Using the WireGuard app's own scanner?").click()
    config = decode_qr(
        page.get_by_role("img", name="Code for the WireGuard app").get_attribute("src") or ""
    )
    return page, link, config


@pytest.mark.parametrize("device", ["iphone", "ipad", "mac", "android", "desktop"])
def test_the_camera_code_opens_the_right_setup_for_each_device(
    browser: Any, live_server: LiveServer, device: str
) -> None:
    _page, link, config = _profile_ready(browser, live_server, device)
    assert "/setup/" in link
    viewport = DESKTOP if device == "desktop" else PHONE
    context = browser.new_context(viewport=viewport, user_agent=AGENTS[device])
    phone = context.new_page()
    phone.goto(link)  # what the camera opens
    expect(phone.get_by_role("heading", name="KSWiFi Connect Setup")).to_be_visible()
    expect(phone.get_by_role("link", name="← KSWiFi Connect")).to_be_visible()
    hrefs = [a.get_attribute("href") or "" for a in phone.get_by_role("link").all()]
    apple = [h for h in hrefs if "/mobileconfig?" in h]
    conf = [h for h in hrefs if "/config?" in h]
    if device == "iphone":
        expect(phone.get_by_role("link", name="Get it from the App Store")).to_be_visible()
        assert len(apple) == 1 and "os=macos" not in apple[0] and not conf
    elif device in ("ipad", "mac"):  # they look alike: both, the iPad's first
        expect(phone.get_by_role("heading", name="On an iPad")).to_be_visible()
        expect(phone.get_by_role("heading", name="On a Mac")).to_be_visible()
        assert len(apple) == 2 and "os=macos" in apple[1] and not conf
    elif device == "android":
        expect(phone.get_by_role("link", name="Get the WireGuard app")).to_be_visible()
        assert len(conf) == 1 and not apple
        code = phone.get_by_role("img", name="Code for the WireGuard app")
        assert decode_qr(code.get_attribute("src") or "") == config
    else:
        assert len(conf) == 1 and len(apple) == 1
    context.close()
    # The config's own code holds a config the WireGuard tools accept.
    if shutil.which("wg-quick"):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "kswifi0.conf"
            path.write_text(config)
            path.chmod(0o600)
            stripped = subprocess.run(
                ["wg-quick", "strip", str(path)], capture_output=True, text=True, timeout=10
            )
            assert stripped.returncode == 0, stripped.stderr
            assert "PrivateKey" in stripped.stdout


def test_my_devices_rename_show_again_and_remove(browser: Any, live_server: LiveServer) -> None:
    page, _link, config = _profile_ready(browser, live_server, "phone")
    page.get_by_role("link", name="My devices").first.click()
    expect(page.get_by_role("heading", name="phone")).to_be_visible()
    expect(page.get_by_text("On: drawing from your current session")).to_be_visible()
    page.get_by_text("Rename or give new keys").click()
    page.get_by_label("Device name").fill("Work phone")
    page.get_by_role("button", name="Rename").click()
    expect(page.get_by_text("Device renamed.")).to_be_visible()
    expect(page.get_by_role("heading", name="Work phone")).to_be_visible()
    page.get_by_role("button", name="Show code again").click()
    page.get_by_text("Using the WireGuard app's own scanner?").click()
    again = decode_qr(
        page.get_by_role("img", name="Code for the WireGuard app").get_attribute("src") or ""
    )
    assert again == config  # the same keys: nothing to reinstall
    page.get_by_role("link", name="My devices").first.click()
    page.get_by_role("button", name="Remove").click()
    expect(page.get_by_text("Device removed. Its profile no longer works.")).to_be_visible()
    expect(page.get_by_text("You have no devices set up yet.")).to_be_visible()
    assert re.search(r"/devices\?notice=removed$", page.url)


def test_open_pages_hear_of_new_keys_and_removal_elsewhere(
    browser: Any, live_server: LiveServer
) -> None:
    code_page, _link, _config = _profile_ready(browser, live_server, "tab")
    list_page = code_page.context.new_page()  # the same person in another tab
    list_page.goto(live_server.url + "/devices")
    expect(list_page.get_by_role("heading", name="tab")).to_be_visible()
    elsewhere = code_page.context.new_page()
    elsewhere.goto(live_server.url + "/devices")
    elsewhere.get_by_text("Rename or give new keys").click()
    elsewhere.get_by_label("I understand").check()
    elsewhere.get_by_role("button", name="New keys").click()
    expect(elsewhere.get_by_role("img", name="Connect QR Code")).to_be_visible()

    expect(code_page.get_by_role("alert")).to_have_text(
        "\u201ctab\u201d got new keys elsewhere: this code no longer works. Show its code "
        "again from My devices."
    )
    expect(list_page.get_by_role("alert")).to_contain_text("\u201ctab\u201d got new keys")
    # The page showing the new code is up to date: no notice there.
    expect(elsewhere.get_by_role("alert")).to_have_count(0)

    elsewhere.goto(live_server.url + "/devices")
    elsewhere.get_by_role("button", name="Remove").click()
    expect(elsewhere.get_by_text("Device removed. Its profile no longer works.")).to_be_visible()
    expect(list_page.get_by_role("alert")).to_have_text(
        "\u201ctab\u201d was removed elsewhere. Its profile no longer works."
    )
    expect(list_page.get_by_role("button", name="Show code again")).to_be_disabled()
    # A page opened on an old code after the fact learns it from the first event.
    expect(code_page.get_by_role("alert")).to_contain_text("was removed elsewhere")


def test_times_are_shown_in_the_persons_time_zone(browser: Any, live_server: LiveServer) -> None:
    _email, admin = live_server.make_admin()
    [voucher] = live_server.vouchers(admin, "basic")
    context = browser.new_context(
        viewport=PHONE, base_url=live_server.url, timezone_id="Asia/Tokyo", locale="en-US"
    )
    page = context.new_page()
    sign_up(page)
    session_id = buy(page, "Basic Session", voucher)
    page.goto(f"/sessions/{session_id}")
    bought = page.locator("time[data-local]").first
    expect(bought).to_contain_text("GMT+9")  # the page said UTC; the script said Tokyo
    assert "UTC" not in (bought.text_content() or "")
    assert (bought.get_attribute("datetime") or "").endswith("+00:00")
    context.close()


def test_console_tables_read_at_phone_width(browser: Any, live_server: LiveServer) -> None:
    """An operator on a phone: each gateway row is a card whose cells name their column, and
    nothing runs off the screen."""
    email, admin = live_server.make_admin()
    live_server.gateway(admin, "eu-west-console")
    context = browser.new_context(viewport=PHONE, base_url=live_server.url)
    page = context.new_page()
    page.goto("/login?next=/admin")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Operator console")).to_be_visible()
    cell = page.locator("td[data-label='State']").first
    expect(cell).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    box = cell.bounding_box()
    assert box is not None and box["x"] + box["width"] <= PHONE["width"]
    context.close()
