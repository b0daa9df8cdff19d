"""Apple configuration profile (.mobileconfig) that installs a Connect Profile on iOS/macOS.

The format is the one the WireGuard app documents for managed deployments: a
`com.apple.vpn.managed` payload with `VPNSubType com.wireguard.ios` (iPhone, iPad) or
`com.wireguard.macos` (the Mac app ignores the other) and the wg-quick text in
`VendorConfig.WgQuickConfig`. The PayloadIdentifier derives from the device id, so installing
the profile of a rotated device replaces the old one instead of adding a second entry; the
PayloadUUIDs are fresh on every download, as Apple's profile format asks.
"""

from __future__ import annotations

import plistlib
import uuid

MEDIA_TYPE = "application/x-apple-aspen-config"
FILENAME = "KSWiFi-Connect.mobileconfig"
DISPLAY_NAME = "KSWiFi Connect"
IDENTIFIER_PREFIX = "app.kswifi.connect"
SUBTYPES = {"ios": "com.wireguard.ios", "macos": "com.wireguard.macos"}


def build_mobileconfig(
    *, device_id: str, config_text: str, endpoint: str, system: str = "ios"
) -> bytes:
    """The XML plist bytes of the profile for one device, for `system` (`ios`: iPhone and
    iPad; `macos`: a Mac)."""
    if not device_id or not config_text or not endpoint:
        raise ValueError("device_id, config_text and endpoint are required")
    if system not in SUBTYPES:
        raise ValueError(f"system is one of {sorted(SUBTYPES)}")
    profile_uuid, payload_uuid = (str(uuid.uuid4()).upper() for _ in range(2))
    identifier = f"{IDENTIFIER_PREFIX}.{device_id}"
    payload = {
        "PayloadType": "com.apple.vpn.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{identifier}.tunnel",
        "PayloadUUID": payload_uuid,
        "PayloadDisplayName": DISPLAY_NAME,
        "PayloadDescription": "Secure Internet Access with your KSWiFi data session",
        "UserDefinedName": DISPLAY_NAME,
        "VPNType": "VPN",
        "VPNSubType": SUBTYPES[system],
        "VendorConfig": {"WgQuickConfig": config_text},
        "VPN": {"RemoteAddress": endpoint, "AuthenticationMethod": "Password"},
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": profile_uuid,
        "PayloadDisplayName": DISPLAY_NAME,
        "PayloadDescription": "Installs your KSWiFi Connect Profile",
        "PayloadOrganization": "KSWiFi",
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [payload],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)
