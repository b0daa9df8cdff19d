"""Screenshots of the main pages at phone (390×844) and desktop (1280×800) sizes.

    .venv/bin/python -m tests.browser.screenshots [OUT_DIR]   # default: docs/screenshots

The browser test `test_screenshots.py` runs the same capture into a temporary folder (or into
docs/screenshots when KSWIFI_WRITE_SCREENSHOTS=1), so the pictures always match the code.
"""

from __future__ import annotations

import re
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from kswifi.control.db import Database
from kswifi.control.events import InProcessEventBus
from kswifi.control.models import DataSession
from kswifi.control.sessions import service as sessions_service
from tests.browser.conftest import DESKTOP, PASSWORD, PHONE, LiveServer

GIB = 1024**3
MIB = 1024**2
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def _context_page(browser: Any, viewport: dict[str, int], base_url: str) -> Page:
    context = browser.new_context(viewport=viewport, base_url=base_url, service_workers="block")
    page: Page = context.new_page()
    page.set_default_timeout(10_000)
    return page


def _login(page: Page, email: str) -> None:
    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/sessions$"))


def _signup(page: Page, email: str) -> None:
    page.goto("/signup")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    page.get_by_label("Password").fill(PASSWORD)  # signing up never logs in
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/plans$"))


def _buy(page: Page, plan_code: str, voucher: str) -> str:
    page.goto(f"/checkout/{plan_code}")
    page.get_by_label("Voucher code").fill(voucher)
    page.get_by_role("button", name="Redeem voucher").click()
    page.wait_for_url(re.compile(r"/sessions/[0-9a-f]+"))
    match = re.search(r"/sessions/([0-9a-f]+)", page.url)
    assert match
    return match.group(1)


def _history(live: LiveServer, session_id: str, total_bytes: int, hours: float) -> None:
    """Backdate a session's start and spread `total_bytes` of usage over the last `hours`."""

    async def work(database: Database) -> None:
        bus = InProcessEventBus()
        now = datetime.now(UTC)
        start = now - timedelta(hours=hours)
        async with database.transaction() as db:
            session = await db.get(DataSession, session_id)
            assert session is not None
            session.created_at = start - timedelta(minutes=5)
            session.activated_at = start
            session.expires_at = start + timedelta(seconds=session.validity_seconds)
        steps = 24
        weights = [1 + (i % 5) * 0.6 + (3 if 9 <= i <= 13 else 0) for i in range(steps)]
        scale = total_bytes / sum(weights)
        for i, weight in enumerate(weights):
            at = start + timedelta(hours=hours) * (i + 1) / (steps + 1)
            amount = int(weight * scale)
            async with database.transaction() as db:
                await sessions_service.record_usage_batch(
                    db,
                    bus,
                    deltas=[
                        sessions_service.UsageDelta(session_id, amount // 8, amount - amount // 8)
                    ],
                    now=at,
                )

    live.run(work)


def _shot(page: Page, out: Path, name: str, size: str) -> Path:
    path = out / f"{size}-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def capture(browser: Any, live: LiveServer, out: Path) -> list[Path]:
    """Drive a small, realistic scene and photograph every main page at both sizes."""
    out.mkdir(parents=True, exist_ok=True)
    admin_email, admin = live.make_admin()
    live.gateway(admin, f"eu-west-{uuid.uuid4().hex[:4]}")
    live.gateway(admin, f"us-east-{uuid.uuid4().hex[:4]}", "us-east")
    premium = live.vouchers(admin, "premium", 2)
    others = live.vouchers(admin, "basic", 1) + live.vouchers(admin, "ultra", 1)
    live.vouchers(admin, "basic", 5)  # unused stock for the console
    email = f"alex-{uuid.uuid4().hex[:6]}@example.com"
    shots: list[Path] = []

    # Some other customers, so that the console has something to show.
    extra = _context_page(browser, DESKTOP, live.url)
    for plan_code, voucher in zip(("basic", "ultra"), others, strict=True):
        extra.context.clear_cookies()
        _signup(extra, f"guest-{uuid.uuid4().hex[:6]}@example.com")
        _buy(extra, plan_code, voucher)
    extra.context.close()

    for size, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        page = _context_page(browser, viewport, live.url)
        page.goto("/")
        shots.append(_shot(page, out, "home", size))
        if size == "phone":
            _signup(page, email)
            session_id = _buy(page, "premium", premium[0])
            page.goto("/plans")
        else:
            _login(page, email)
            page.goto("/plans")
        shots.append(_shot(page, out, "plans", size))
        page.goto("/checkout/premium")
        shots.append(_shot(page, out, "checkout", size))
        page.goto(f"/sessions/{session_id}/setup")
        shots.append(_shot(page, out, "setup", size))
        page.get_by_role("button", name="Generate Connect Code").click()
        expect(page.get_by_text("Your KSWiFi Connect profile is ready")).to_be_visible()
        shots.append(_shot(page, out, "profile-ready", size))
        token = live.carrier(session_id)
        if size == "phone":
            _history(live, session_id, int(2.1 * GIB) - 6 * MIB, hours=3)
            live.handshake(token, session_id)
        page.goto(f"/sessions/{session_id}")
        expect(page.locator("#usage")).to_have_attribute("data-stream", "open")
        live.report_usage(token, session_id, rx_bytes=MIB, tx_bytes=2 * MIB)
        page.wait_for_timeout(1000)
        live.report_usage(token, session_id, rx_bytes=MIB // 2, tx_bytes=2 * MIB + MIB // 2)
        expect(page.locator('[data-field="status"]')).to_have_text("Connect Profile Active")
        expect(page.locator('[data-field="speed"]')).not_to_have_text("—")
        shots.append(_shot(page, out, "usage", size))
        if size == "phone":
            _buy(page, "premium", premium[1])
        page.goto("/sessions")
        shots.append(_shot(page, out, "sessions", size))
        page.goto("/devices")
        shots.append(_shot(page, out, "devices", size))
        page.context.close()

        console = _context_page(browser, viewport, live.url)
        _login_admin(console, admin_email)
        for name, path in (
            ("console-gateways", "/admin"),
            ("console-sessions", "/admin/sessions"),
            ("console-reports", "/admin/reports?days=7"),
            ("console-audit", "/admin/audit"),
        ):
            console.goto(path)
            shots.append(_shot(console, out, name, size))
        console.context.close()
    return shots


def _login_admin(page: Page, email: str) -> None:
    page.goto("/login?next=/admin")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/admin$"))


def main() -> None:
    import pytest

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    raise SystemExit(
        pytest.main(
            ["-q", "-p", "no:cacheprovider", "tests/browser/test_screenshots.py"],
            plugins=[_OutDir(out)],
        )
    )


class _OutDir:
    def __init__(self, out: Path) -> None:
        self.out = out

    def pytest_configure(self, config: Any) -> None:
        config.kswifi_screenshots_dir = self.out


if __name__ == "__main__":
    main()
