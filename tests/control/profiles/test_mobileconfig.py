"""The Apple configuration profile: WireGuard's managed payload (iOS or macOS), a stable
identifier per device and fresh UUIDs on every download."""

from __future__ import annotations

import plistlib
from typing import Any

import pytest

from kswifi.control.profiles.config_render import render_config
from kswifi.control.profiles.mobileconfig import build_mobileconfig
from tests.control.profiles.test_config_render import sample


def build(
    device_id: str = "dev1", config: str | None = None, system: str = "ios"
) -> dict[str, Any]:
    text = config if config is not None else render_config(sample())
    data = build_mobileconfig(
        device_id=device_id, config_text=text, endpoint="gw.example:51820", system=system
    )
    assert data.startswith(b"<?xml")
    loaded: dict[str, Any] = plistlib.loads(data)
    return loaded


class TestMobileconfig:
    def test_payload_is_wireguard_managed(self) -> None:
        text = render_config(sample())
        profile = build(config=text)
        assert profile["PayloadType"] == "Configuration"
        assert profile["PayloadVersion"] == 1
        [payload] = profile["PayloadContent"]
        assert payload["PayloadType"] == "com.apple.vpn.managed"
        assert payload["VPNType"] == "VPN"
        assert payload["VPNSubType"] == "com.wireguard.ios"
        assert payload["VendorConfig"] == {"WgQuickConfig": text}
        assert payload["UserDefinedName"] == "KSWiFi Connect"
        assert payload["VPN"]["RemoteAddress"] == "gw.example:51820"

    def test_identifier_stable_per_device_uuids_fresh_on_every_download(self) -> None:
        first, again, other = build("dev1"), build("dev1"), build("dev2")
        # A new download of one device replaces the installed one (same identifier) ...
        assert first["PayloadIdentifier"] == again["PayloadIdentifier"]
        assert first["PayloadIdentifier"] != other["PayloadIdentifier"]
        # ... and is a new profile document (fresh UUIDs, as Apple's format asks).
        uuids = [profile[key] for profile in (first, again) for key in ("PayloadUUID",)] + [
            profile["PayloadContent"][0]["PayloadUUID"] for profile in (first, again)
        ]
        assert len(set(uuids)) == 4

    def test_a_mac_gets_the_macos_subtype(self) -> None:
        [payload] = build(system="macos")["PayloadContent"]
        assert payload["VPNSubType"] == "com.wireguard.macos"
        with pytest.raises(ValueError, match="system"):
            build(system="android")

    def test_user_facing_strings_avoid_technical_words(self) -> None:
        profile = build()
        shown = [
            profile["PayloadDisplayName"],
            profile["PayloadDescription"],
            profile["PayloadContent"][0]["PayloadDisplayName"],
            profile["PayloadContent"][0]["PayloadDescription"],
        ]
        for text in shown:
            assert "VPN" not in text and "eSIM" not in text

    def test_missing_input_refused(self) -> None:
        with pytest.raises(ValueError):
            build_mobileconfig(device_id="", config_text="x", endpoint="gw:1")
