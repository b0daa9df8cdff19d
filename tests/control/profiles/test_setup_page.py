"""The setup page's HTML (pure): platform detection, one way to install per platform,
escaping, user-facing words."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kswifi.control.profiles.setup_page import (
    TUNNEL_NAME,
    WIREGUARD_ANDROID_URL,
    WIREGUARD_IOS_URL,
    WIREGUARD_MAC_URL,
    detect_platform,
    render_setup_error,
    render_setup_page,
    tunnel_filename,
)

IPAD_DESKTOP_MODE = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15"
)


@pytest.mark.parametrize(
    ("agent", "platform"),
    [
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)", "iphone"),
        ("Mozilla/5.0 (iPad; CPU OS 16_0 like Mac OS X)", "iphone"),
        (IPAD_DESKTOP_MODE, "mac"),  # an iPad's Safari, or a Mac: the page offers both
        ("Mozilla/5.0 (Linux; Android 14; Pixel 8)", "android"),
        ("Mozilla/5.0 (X11; Linux x86_64)", "other"),
        ("", "other"),
        (None, "other"),
    ],
)
def test_detect_platform(agent: str | None, platform: str) -> None:
    assert detect_platform(agent) == platform


def page(platform: str) -> str:
    return render_setup_page(
        platform=platform,  # type: ignore[arg-type]
        config_url="https://x.example/c?t=a&b",
        mobileconfig_url="https://x.example/m?t=a&b",
        mac_mobileconfig_url="https://x.example/m?t=a&b&os=macos",
        config_qr="data:image/png;base64,QUJD",
        app_url="https://app.example/",
        expires_at=datetime(2030, 1, 1, 12, 30, tzinfo=UTC),
    )


@pytest.mark.parametrize("platform", ["iphone", "mac", "android", "other"])
def test_page_uses_user_facing_words_only(platform: str) -> None:
    page_text = page(platform)
    assert page_text.startswith("<!doctype html>")
    assert "<title>KSWiFi Connect Setup</title>" in page_text
    assert "VPN" not in page_text and "eSIM" not in page_text
    assert "vpn" not in page_text.lower()
    assert "t=a&amp;b" in page_text and "t=a&b" not in page_text  # URLs are escaped
    assert "12:30 UTC" in page_text
    assert "<script" not in page_text
    assert "Scan to activate" not in page_text  # it is the page the code opened
    assert '<a href="https://app.example/">' in page_text  # a way back to the app


def test_each_platform_gets_its_way_to_install() -> None:
    iphone = page("iphone")
    assert WIREGUARD_IOS_URL in iphone and "Profile Downloaded" in iphone
    assert "m?t=a&amp;b" in iphone and "os=macos" not in iphone and "c?t=" not in iphone
    mac = page("mac")  # a Mac, or an iPad asking for the desktop site
    assert "On an iPad" in mac and "On a Mac" in mac
    assert WIREGUARD_MAC_URL in mac and "os=macos" in mac and WIREGUARD_IOS_URL in mac
    android = page("android")
    assert WIREGUARD_ANDROID_URL in android and "c?t=a&amp;b" in android
    assert "Import from file or archive" in android and "/m?t=" not in android
    assert 'alt="Code for the WireGuard app"' in android  # for the app's own scanner
    other = page("other")
    assert "c?t=a&amp;b" in other and 'alt="Code for the WireGuard app"' in other


def test_downloads_keep_a_valid_tunnel_name_when_saved_twice() -> None:
    names = {tunnel_filename() for _ in range(50)}
    assert len(names) > 40  # a fresh name per download: no "(1)" from the browser
    for name in names:
        assert name.endswith(".conf") and TUNNEL_NAME.match(name.removesuffix(".conf"))


def test_error_page_escapes_the_message() -> None:
    page_text = render_setup_error("<b>nope</b>", "https://app.example/")
    assert "&lt;b&gt;nope&lt;/b&gt;" in page_text
    assert "Generate Connect Code" in page_text


def test_setup_pages_name_support_when_it_is_set() -> None:
    from kswifi.control.profiles.setup_page import Support

    support = Support("https://help.kswifi.test/", "help@kswifi.test")
    page = render_setup_page(
        platform="android",
        config_url="https://x.example/c",
        mobileconfig_url="https://x.example/m",
        mac_mobileconfig_url="https://x.example/m?os=macos",
        config_qr="data:image/png;base64,QUJD",
        app_url="https://app.example/",
        expires_at=datetime(2030, 1, 1, 12, 30, tzinfo=UTC),
        support=support,
    )
    error = render_setup_error("This setup link was already used.", "https://a/", support)
    for html in (page, error):
        assert '<a href="https://help.kswifi.test/">Help</a>' in html
        assert '<a href="mailto:help@kswifi.test">help@kswifi.test</a>' in html
    assert "<footer>" not in render_setup_error("Used.", "https://a/")
