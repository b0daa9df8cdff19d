"""Every page a person sees, rendered for real, never says "VPN" or "eSIM" (any letter case).

The scan reads what a person can see or hear: text, and the attributes screen readers and
browsers show (alt, title, aria-label, placeholder, labels, the page title and description).
Opaque data such as QR images and signed links is not words, and is skipped.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import pytest

from kswifi.control.deps import AppContext
from tests.web.conftest import (
    add_gateway,
    buy_with_voucher,
    make_vouchers,
    post_form,
    report_usage,
    web_signup,
)

FORBIDDEN = re.compile(r"vpn|e-?sim", re.IGNORECASE)
READABLE_ATTRIBUTES = {"alt", "title", "aria-label", "placeholder", "label", "content"}
GIB = 1024**3


SHOWN_META = {"description", "og:title", "og:description", "application-name"}


def is_opaque(tag: str, attrs: dict[str, str | None]) -> bool:
    """Data no person sees: hidden form fields and machine-read meta tags (the CSRF token)."""
    if tag == "input":
        return attrs.get("type") == "hidden"
    if tag == "meta":
        return (attrs.get("name") or attrs.get("property")) not in SHOWN_META
    return False


class ReadableText(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        if is_opaque(tag, dict(attrs)):
            return
        for name, value in attrs:
            shown = name in READABLE_ATTRIBUTES or (tag == "input" and name == "value")
            if value and shown and not value.startswith("data:"):
                self.parts.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def readable(html: str) -> str:
    parser = ReadableText()
    parser.feed(html)
    return " ".join(parser.parts)


def assert_clean(where: str, html: str) -> None:
    text = readable(html)
    found = FORBIDDEN.findall(text)
    assert not found, f"{where} says {found!r}"


class FormControls(HTMLParser):
    """Visible form controls, the ids that labels point at, and images without alt text."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.labelled: set[str] = set()
        self.images_without_alt = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "label" and values.get("for"):
            self.labelled.add(str(values["for"]))
        if tag in ("input", "select", "textarea") and values.get("type") not in ("hidden",):
            self.controls.append(values)
        if tag == "img" and "alt" not in values:
            self.images_without_alt += 1


def assert_accessible_forms(where: str, html: str) -> None:
    """Every visible control has a label (or an aria-label); every image has alt text."""
    parser = FormControls()
    parser.feed(html)
    for control in parser.controls:
        assert control.get("aria-label") or control.get("id") in parser.labelled, (where, control)
    assert parser.images_without_alt == 0, where


def test_the_scanner_catches_the_words() -> None:
    with pytest.raises(AssertionError):
        assert_clean("sample", "<p>Your VPN is ready</p>")
    with pytest.raises(AssertionError):
        assert_clean("sample", '<img alt="eSIM QR Code" src="x.png">')
    assert_clean("sample", '<img alt="Connect QR Code" src="data:image/png;base64,VPNeSIM">')
    with pytest.raises(AssertionError):
        assert_clean("sample", '<input type="text" value="My VPN">')
    with pytest.raises(AssertionError):
        assert_clean("sample", '<meta name="description" content="A VPN shop">')
    # a random CSRF token is not words, even when its letters happen to spell one
    assert_clean("sample", '<meta name="csrf-token" content="x_vPN-3">')
    assert_clean("sample", '<input type="hidden" name="csrf_token" value="x_vPN-3">')


async def test_no_user_page_says_vpn_or_esim(client: httpx.AsyncClient, ctx: AppContext) -> None:
    pages: dict[str, str] = {}

    async def visit(path: str, expected: int = 200) -> None:
        response = await client.get(path)
        assert response.status_code == expected, (path, response.status_code)
        pages[path] = response.text

    async def visit_and_read(path: str) -> str:
        await visit(path)
        return pages[path]

    for path in (
        "/",
        "/signup",
        "/login",
        "/plans",
        "/offline",
        "/password-reset",
        "/terms",
        "/privacy",
        "/refunds",
    ):
        await visit(path)
    await visit("/password-reset/not-a-token")
    await visit("/no-such-page", 404)
    refused = await client.post("/signup", data={"email": "a@example.com"})
    pages["csrf refusal"] = refused.text
    wrong = await post_form(client, "/login", email="nobody@example.com", password="wrong pass")
    pages["failed login"] = wrong.text

    await web_signup(client)
    await visit("/account")
    token = await add_gateway(ctx)
    for path in ("/plans", "/sessions", "/checkout/basic", "/checkout/premium", "/checkout/ultra"):
        await visit(path)
    used = await post_form(client, "/checkout/basic", payment_method="voucher", voucher_code="X-X")
    pages["bad voucher"] = used.text

    [code] = await make_vouchers(ctx, "premium")
    session_id = await buy_with_voucher(client, code)
    receipts = await visit_and_read("/receipts")
    receipt_link = re.search(r'href="(/receipts/[0-9a-f]{32})"', receipts)
    assert receipt_link
    await visit(receipt_link.group(1))
    await visit(f"/sessions/{session_id}?notice=bought")
    await visit(f"/sessions/{session_id}/setup")
    ready = await post_form(client, f"/sessions/{session_id}/setup")
    assert ready.status_code == 200
    pages["profile ready"] = ready.text
    setup_link = re.search(r'href="(/setup/[^"]+)"', ready.text)
    assert setup_link
    await visit(setup_link.group(1))  # the phone's setup page (served by the profiles domain)
    await visit(setup_link.group(1), 410)  # and its "already used" answer

    await report_usage(client, token, session_id, rx_bytes=4 * GIB + GIB // 2)
    await visit(f"/sessions/{session_id}")  # with the 80 % warning state
    await report_usage(client, token, session_id, rx_bytes=GIB)
    await visit(f"/sessions/{session_id}")  # exhausted
    await visit("/sessions")

    for where, html in pages.items():
        assert_clean(where, html)
        assert_accessible_forms(where, html)
    assert len(pages) >= 17


async def test_static_text_and_manifest(client: httpx.AsyncClient) -> None:
    for path in ("/static/app.js", "/manifest.webmanifest", "/sw.js"):
        response = await client.get(path)
        assert not FORBIDDEN.search(response.text), path
