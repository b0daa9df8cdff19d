"""In Chromium: the installed web app's service worker turns a pushed alert into a
notification (delivered through the DevTools protocol, as a push service would), with the
title and text the server sends, and the My account page offers notifications."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from playwright.sync_api import expect

from kswifi.control.push.service import Notification
from tests.browser.conftest import PASSWORD, PHONE, LiveServer


def test_a_pushed_alert_becomes_a_notification(browser: Any, live_server: LiveServer) -> None:
    context = browser.new_context(viewport=PHONE, base_url=live_server.url)
    context.grant_permissions(["notifications"], origin=live_server.url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    email = f"push-{uuid.uuid4().hex[:8]}@example.com"
    page.goto("/signup")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/plans")
    page.goto("/account")
    expect(page.get_by_role("button", name="Turn on notifications on this device")).to_be_visible()

    cdp = context.new_cdp_session(page)
    registrations: list[str] = []
    cdp.on(
        "ServiceWorker.workerRegistrationUpdated",
        lambda event: registrations.extend(
            r["registrationId"] for r in event["registrations"] if not r.get("isDeleted")
        ),
    )
    cdp.send("ServiceWorker.enable")
    page.evaluate("navigator.serviceWorker.ready.then(() => true)")
    deadline = time.monotonic() + 15
    while not registrations and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert registrations, "the service worker never registered"

    alert = Notification(
        title="You have used 80% of your Premium Session",
        body="4 GB of 5 GB used. Tap to buy more: no new setup needed.",
        url=f"{live_server.url}/plans",
        tag="s1:usage_80",
    )
    cdp.send(
        "ServiceWorker.deliverPushMessage",
        {"origin": live_server.url, "registrationId": registrations[-1], "data": alert.to_json()},
    )
    shown: list[dict[str, Any]] = []
    deadline = time.monotonic() + 15
    while not shown and time.monotonic() < deadline:
        shown = page.evaluate(
            """navigator.serviceWorker.ready.then((r) => r.getNotifications()).then((list) =>
                 list.map((n) => ({title: n.title, body: n.body, tag: n.tag, data: n.data})))"""
        )
        page.wait_for_timeout(100)
    assert shown == [
        {
            "title": alert.title,
            "body": alert.body,
            "tag": alert.tag,
            "data": {"url": alert.url},
        }
    ], json.dumps(shown)
    context.close()
