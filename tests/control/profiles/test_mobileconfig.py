"""The Apple configuration profile: WireGuard's managed payload, stable identifiers per device."""

from __future__ import annotations

import plistlib
from typing import Any

import pytest

from kswifi.control.profiles.config_render import render_config
from kswifi.control.profiles.mobileconfig import build_mobileconfig, payload_uuids
from tests.control.profiles.test_config_render import sample


def build(device_id: str = "dev1", config: str | None = None) -> dict[str, Any]:
    text = config if config is not None else render_config(sample())
    data = build_mobileconfig(device_id=device_id, config_text=text, endpoint="gw.example:51820")
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

    def test_identifiers_are_stable_per_device_and_distinct_across_devices(self) -> None:
        first, again, other = build("dev1"), build("dev1"), build("dev2")
        assert first["PayloadUUID"] == again["PayloadUUID"]
        assert (
            first["PayloadContent"][0]["PayloadUUID"] == again["PayloadContent"][0]["PayloadUUID"]
        )
        assert first["PayloadIdentifier"] == again["PayloadIdentifier"]
        assert first["PayloadUUID"] != other["PayloadUUID"]
        assert first["PayloadIdentifier"] != other["PayloadIdentifier"]
        assert len(set(payload_uuids("dev1"))) == 2

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
