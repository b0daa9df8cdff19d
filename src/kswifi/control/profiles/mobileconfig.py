"""Apple configuration profile (.mobileconfig) that installs a Connect Profile on iOS/macOS.

The format is the one the WireGuard app documents for managed deployments: a
`com.apple.vpn.managed` payload with `VPNSubType com.wireguard.ios` and the wg-quick text in
`VendorConfig.WgQuickConfig`. Identifiers and UUIDs derive from the device id, so installing
the profile of a rotated device replaces the old one instead of adding a second entry.
"""

from __future__ import annotations

import plistlib
import uuid

MEDIA_TYPE = "application/x-apple-aspen-config"
FILENAME = "KSWiFi-Connect.mobileconfig"
DISPLAY_NAME = "KSWiFi Connect"
IDENTIFIER_PREFIX = "app.kswifi.connect"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://kswifi.app/connect-profiles")


def payload_uuids(device_id: str) -> tuple[str, str]:
    """(outer profile UUID, inner payload UUID), stable for one device."""
    return (
        str(uuid.uuid5(_NAMESPACE, f"profile:{device_id}")).upper(),
        str(uuid.uuid5(_NAMESPACE, f"payload:{device_id}")).upper(),
    )


def build_mobileconfig(*, device_id: str, config_text: str, endpoint: str) -> bytes:
    """The XML plist bytes of the profile for one device."""
    if not device_id or not config_text or not endpoint:
        raise ValueError("device_id, config_text and endpoint are required")
    profile_uuid, payload_uuid = payload_uuids(device_id)
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
        "VPNSubType": "com.wireguard.ios",
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
