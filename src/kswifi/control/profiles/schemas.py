"""Request and response models of the profiles domain."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

SETUP_INSTRUCTIONS: tuple[str, str, str, str] = (
    "1. Scan this QR code with your device camera",
    "2. Tap 'Add' when prompted to install profile",
    "3. Enable 'KSWiFi Connect' in your device settings",
    "4. Enjoy secure global internet access!",
)
DEFAULT_DEVICE_NAME = "My device"


def _printable(value: str) -> str:
    if any(not character.isprintable() for character in value):
        raise ValueError("must not contain control characters")
    return value


DeviceName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
    AfterValidator(_printable),
]


class GenerateConnectRequest(BaseModel):
    """`POST /api/connect/generate-profile`. Unknown fields (such as `data_limit_mb`) are
    ignored: the data limit is always the session's own."""

    model_config = ConfigDict(extra="ignore")

    session_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="A session of yours to draw from; default: your current or next session",
    )
    region: str | None = Field(
        None,
        min_length=1,
        max_length=32,
        pattern=r"^[a-z0-9][a-z0-9-]*$",
        description="Region code (e.g. `eu-west`); default: the best available region",
    )
    device_name: DeviceName | None = Field(
        None,
        description=(
            "Names the phone; generating again with the same name shows that device's profile"
            f" again (same keys, same address). Default: {DEFAULT_DEVICE_NAME!r}"
        ),
    )
    rotate: bool = Field(
        False, description="Give the named device new keys (its installed profile stops working)"
    )


class ConnectProfileResponse(BaseModel):
    """The product note's response, field for field, plus links and the region/gateway used."""

    success: Literal[True] = True
    connect_id: str = Field(description="The device's id (a Connect Profile)")
    profile_qr: str = Field(
        description="The Connect QR Code (PNG data URI): the single-use setup link, which a "
        "phone's camera opens"
    )
    session_id: str | None = Field(
        description="The session the device draws from (or will, once it is its turn); null: "
        "no session to draw from (the device reaches only the shop)"
    )
    data_limit_mb: int = Field(description="The session's data limit (1 GB = 1024 MB)")
    profile_type: Literal["kswifi_connect"] = "kswifi_connect"
    setup_instructions: list[str]
    access_method: Literal["secure_profile"] = "secure_profile"
    region: str
    region_note: str | None = Field(
        None,
        description="Set when the region is not the one nearest to the caller (it had no free "
        "gateway) or the device moved off an offline gateway",
    )
    gateway: str = Field(description="Name of the gateway that carries the device")
    expires_at: datetime | None = Field(
        description="When the session's validity ends; null until it starts, at the phone's "
        "first connection"
    )
    state: Literal["active", "waiting", "garden"] = Field(
        "active",
        description="`active`: draws from a session; `waiting`: beyond the session's device "
        "limit; `garden`: no session (reaches only the shop)",
    )
    rotated: bool = Field(False, description="The device got new keys with this call")
    setup_url: str = Field(description="Single-use setup page for the phone, valid 10 minutes")
    config_url: str = Field(description="KSWiFi-Connect.conf download (signed, short-lived)")
    mobileconfig_url: str = Field(description="Apple profile download (signed, short-lived)")
    profile_qr_svg: str = Field(description="The same QR code as an SVG document")
    config_qr: str = Field(
        description="PNG data URI of the wg-quick config as a QR code, for the scanner inside "
        "the WireGuard app (also shown on the setup page)"
    )
    config_qr_svg: str = Field(description="The config QR code as an SVG document")


class RenameProfile(BaseModel):
    """`PATCH /api/connect/profiles/{id}`."""

    model_config = ConfigDict(extra="forbid")

    device_name: DeviceName


class ConnectProfileOut(BaseModel):
    """One of the caller's Connect Profiles (no key material)."""

    connect_id: str
    session_id: str | None = Field(description="The session it draws from now; null: none")
    state: Literal["active", "waiting", "garden"]
    device_name: str
    region: str
    gateway: str
    ipv4: str
    ipv6: str
    created_at: datetime
    last_handshake_at: datetime | None


class ConnectProfileList(BaseModel):
    profiles: list[ConnectProfileOut]
