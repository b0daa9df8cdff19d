"""The setup page's HTML (pure): platform detection, escaping, user-facing words."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kswifi.control.profiles.setup_page import (
    detect_platform,
    render_setup_error,
    render_setup_page,
)

IPAD_DESKTOP_MODE = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15"
)


@pytest.mark.parametrize(
    ("agent", "platform"),
    [
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)", "apple"),
        ("Mozilla/5.0 (iPad; CPU OS 16_0 like Mac OS X)", "apple"),
        (IPAD_DESKTOP_MODE, "apple"),
        ("Mozilla/5.0 (Linux; Android 14; Pixel 8)", "android"),
        ("Mozilla/5.0 (X11; Linux x86_64)", "other"),
        ("", "other"),
        (None, "other"),
    ],
)
def test_detect_platform(agent: str | None, platform: str) -> None:
    assert detect_platform(agent) == platform


@pytest.mark.parametrize("platform", ["apple", "android", "other"])
def test_page_uses_user_facing_words_only(platform: str) -> None:
    page = render_setup_page(
        platform=platform,  # type: ignore[arg-type]
        config_url="https://x.example/c?t=a&b",
        mobileconfig_url="https://x.example/m?t=a&b",
        expires_at=datetime(2030, 1, 1, 12, 30, tzinfo=UTC),
    )
    assert page.startswith("<!doctype html>")
    assert "<title>KSWiFi Connect Setup</title>" in page
    assert "VPN" not in page and "eSIM" not in page and "vpn" not in page.lower()
    assert "t=a&amp;b" in page and "t=a&b" not in page  # URLs are escaped
    assert "12:30 UTC" in page
    assert "<script" not in page


def test_error_page_escapes_the_message() -> None:
    page = render_setup_error("<b>nope</b>")
    assert "&lt;b&gt;nope&lt;/b&gt;" in page
    assert "Generate Connect Code" in page
