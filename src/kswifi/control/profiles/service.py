"""Business rules of Connect Profiles: generate (or rotate) a device, its links and downloads.

The device's private key is kept encrypted (so its code can be shown again without new keys);
the rendered config lives, encrypted, only in the setup link row for the link's ten minutes.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.config import Settings
from kswifi.control.deps import AppContext
from kswifi.control.errors import (
    Conflict,
    Gone,
    NotFound,
    SessionNotUsable,
    TooManyRequests,
    Unauthorized,
)
from kswifi.control.events import EventBus
from kswifi.control.gateways import addresses as gateway_addresses
from kswifi.control.gateways import desired as gateway_desired
from kswifi.control.gateways import garden
from kswifi.control.gateways import service as gateways
from kswifi.control.geoip import UNKNOWN, ClientLocation
from kswifi.control.models import DataSession, Device, Gateway, new_id, utcnow
from kswifi.control.profiles import notices, qr, repository, setup_page
from kswifi.control.profiles.config_render import (
    ClientConfig,
    parse_dns_servers,
    render_config,
)
from kswifi.control.profiles.keys import WireguardKey, generate_keypair, generate_preshared_key
from kswifi.control.profiles.schemas import (
    DEFAULT_DEVICE_NAME,
    SETUP_INSTRUCTIONS,
    ConnectProfileList,
    ConnectProfileOut,
    ConnectProfileResponse,
)
from kswifi.control.regions import service as regions
from kswifi.control.security import SecretBox, hash_token, new_opaque_token
from kswifi.control.sessions import service as sessions
from kswifi.control.users.ratelimit import SlidingWindowLimiter

SETUP_LINK_TTL = timedelta(minutes=10)
SETUP_TOKEN_BYTES = 16
FALLBACK_DNS = ", ".join(garden.FALLBACK_DNS)  # a region without DNS servers set
MIB = 1024 * 1024
_DOWNLOAD_PURPOSE = "profile-download"
_SIGNATURE_CHARS = 32  # 128 bits of HMAC-SHA256
# Each generation draws two QR codes and may make keys and wake the gateway: a person may ask
# only so often (per process; the web and the API share it). Rotation storms stay bounded.
GENERATIONS_PER_PERSON_PER_MINUTE = 20
_generations = SlidingWindowLimiter(GENERATIONS_PER_PERSON_PER_MINUTE)


class DeviceLimitReached(Conflict):
    code = "device_limit_reached"


MAX_PROFILES_PER_PERSON = 10
"""Devices one person may have installed (each holds an address on a gateway); how many draw
data at once is the current session's device limit."""
NO_SESSION_MESSAGE = "You have no data session. Buy one to set up a device."


class DeviceInOtherRegion(Conflict):
    code = "device_in_other_region"


@dataclass(frozen=True)
class GeneratedProfile:
    """What one generate call produced, as plain values (rendered after the commit); the
    secrets in it live only for this response."""

    connect_id: str
    session_id: str | None  # the session it draws from (or will); None: none to draw from
    data_limit_bytes: int
    session_expires_at: datetime | None
    region: str
    gateway_name: str
    config_text: str
    setup_token: str
    download_token: str
    setup_expires_at: datetime
    rotated: bool
    region_note: str | None = None  # why the region is not the nearest, or the move
    state: str = "active"  # see `device_state`


@dataclass(frozen=True)
class ProfileDownload:
    device_id: str
    config_text: str
    endpoint: str


@dataclass(frozen=True)
class OpenedSetupLink:
    device_id: str
    download_token: str
    expires_at: datetime
    config_text: str  # for the config's own code on the page (the link's ten minutes only)


async def generate_for_request(
    db: AsyncSession,
    ctx: AppContext,
    *,
    user_id: str,
    session_id: str | None,
    region: str | None,
    device_name: str | None,
    peer_address: str | None,
    headers: Mapping[str, str],
    rotate: bool = False,
) -> GeneratedProfile:
    """`generate_profile` as the API and the web pages call it: the app's keys, settings and
    bus, the client located from its connection (and the trusted proxy headers), now."""
    return await generate_profile(
        db,
        secrets=ctx.secrets,
        settings=ctx.settings,
        bus=ctx.events,
        user_id=user_id,
        session_id=session_id,
        region=region,
        device_name=device_name,
        now=utcnow(),
        client=regions.locate_client(ctx.settings, peer_address=peer_address, headers=headers),
        rotate=rotate,
    )


async def generate_profile(
    db: AsyncSession,
    *,
    secrets: SecretBox,
    settings: Settings,
    bus: EventBus,
    user_id: str,
    session_id: str | None,
    region: str | None,
    device_name: str | None,
    now: datetime,
    client: ClientLocation | None = None,
    rotate: bool = False,
) -> GeneratedProfile:
    """The person's device of that name, installed once: a new one goes on a gateway of the
    region (none asked: the region nearest to `client`); an installed one is shown again with
    the same keys, or new keys with `rotate` (same gateway and address; the old keys leave the
    gateway's desired state). A device whose gateway went offline or was disabled moves to a
    healthy gateway (of its region when there is one) with a new address and new keys.

    Which session the device draws from is the person's current one (see
    `sessions.handover`): `session_id` only checks that the named session is theirs and
    usable. A new device needs a current or queued session."""
    await sessions.lock_person(db, user_id)  # before any of the person's rows
    wait = _generations.hit(user_id)
    if wait is not None:
        raise TooManyRequests(
            f"Too many Connect Codes in a minute; try again in {wait} seconds", wait
        )
    usable = await sessions.usable_sessions(db, user_id, now)
    named = None
    if session_id is not None:
        named = await sessions.get_for_user(db, user_id, session_id)
        sessions.ensure_usable(named, now)
    name = device_name or DEFAULT_DEVICE_NAME
    devices = await repository.active_devices_of_user(db, user_id)
    existing = next((device for device in devices if device.device_name == name), None)

    region_note: str | None = None
    moved_from: list[str] = []
    if existing is not None:
        gateway = await repository.get_gateway(db, existing.gateway_id)
        if gateway is None:  # pragma: no cover - foreign key
            raise NotFound("No such gateway")
        usable_gateway = regions.gateway_usable(gateway, now, settings)
        if usable_gateway and region is not None and region != gateway.region_code:
            raise DeviceInOtherRegion(
                f"The device {name!r} is set up for region {gateway.region_code}. "
                "Remove it first to set it up in another region."
            )
        device = existing
        rotated = rotate or not usable_gateway or device.private_key_encrypted is None
        if not usable_gateway:
            placement = await regions.place_away_from(
                db, gateway, region=region, client=client or UNKNOWN, settings=settings, now=now
            )
            await gateway_addresses.release_host(db, gateway.id, device.host_index, now)
            moved_from.append(gateway.id)
            gateway = placement.gateway
            device.host_index, device.ipv4, device.ipv6 = await gateway_addresses.allocate_host(
                db, gateway, settings, now
            )
            device.gateway_id = gateway.id
            region_note = placement.note or (
                f"Your previous gateway was not responding; this device now uses {gateway.name}"
                f" in {gateway.region_code}. Scan this new code: the old one no longer works."
            )
        if rotated:
            private_key, preshared_key = generate_keypair().private_key, generate_preshared_key()
            device.public_key = str(private_key.public_key())
            device.private_key_encrypted = secrets.encrypt(str(private_key))
            device.preshared_key_encrypted = secrets.encrypt(str(preshared_key))
            device.rotated_at = now
            await repository.delete_setup_links(db, [device.id])
            notices.announce(db, bus, device, "rotated")
        else:
            assert device.private_key_encrypted is not None
            private_key = WireguardKey.from_base64(secrets.decrypt(device.private_key_encrypted))
            preshared_key = WireguardKey.from_base64(
                secrets.decrypt(device.preshared_key_encrypted)
            )
        await db.flush()
        if rotated:
            await gateway_desired.bump_revision(db, [gateway.id, *moved_from], bus, [user_id])
        dns_servers = (await gateways.gateway_public_info(db, gateway)).dns_servers
        device_id, ipv4, ipv6 = device.id, device.ipv4, device.ipv6
        new_device: dict[str, object] | None = None
    else:
        if not usable and named is None:
            raise SessionNotUsable(NO_SESSION_MESSAGE, status="none")
        if len(devices) >= MAX_PROFILES_PER_PERSON:
            raise DeviceLimitReached(
                f"You have {MAX_PROFILES_PER_PERSON} devices set up. Remove one first, or "
                "generate again with the name of one to show it again.",
                max_devices=MAX_PROFILES_PER_PERSON,
            )
        rotated = False
        keypair = generate_keypair()
        private_key, preshared_key = keypair.private_key, generate_preshared_key()
        placement = await regions.place(
            db, region=region, client=client or UNKNOWN, settings=settings, now=now
        )
        gateway, region_note = placement.gateway, placement.note
        dns_servers = (
            regions.dns_list(placement.region)
            if placement.region is not None
            else (await gateways.gateway_public_info(db, gateway)).dns_servers
        )
        # Last, because the gateway row stays locked from here to the commit: the address and
        # the revision bump in one statement, then the device and its setup link in one more.
        host = await gateway_addresses.allocate_host_and_bump(
            db, gateway.id, settings, now, bus, user_id=user_id
        )
        device_id, ipv4, ipv6 = new_id(), host.ipv4, host.ipv6
        new_device = {
            "id": device_id,
            "session_id": None,  # the hand-over below says which
            "user_id": user_id,
            "gateway_id": gateway.id,
            "device_name": name,
            "status": repository.ACTIVE,
            "public_key": str(keypair.public_key),
            "preshared_key_encrypted": secrets.encrypt(str(preshared_key)),
            "private_key_encrypted": secrets.encrypt(str(private_key)),
            "host_index": host.host_index,
            "ipv4": ipv4,
            "ipv6": ipv6,
            "created_at": now,
            "rotated_at": now,
            "last_handshake_at": None,
            "removed_at": None,
        }

    config_text = render_config(
        _client_config(settings, gateway, dns_servers, ipv4, ipv6, private_key, preshared_key)
    )
    # 128 bits: single-use and short-lived, and the Connect QR Code that holds the link stays
    # small (a few hundred modules fewer than 256 bits would cost).
    setup_token = new_opaque_token(SETUP_TOKEN_BYTES)
    setup_expires_at = now + SETUP_LINK_TTL
    token_hash = hash_token(setup_token)
    config_encrypted = secrets.encrypt(config_text)
    if new_device is None:
        repository.add_setup_link(
            db,
            token_hash=token_hash,
            device_id=device_id,
            config_encrypted=config_encrypted,
            expires_at=setup_expires_at,
        )
        await db.flush()
    else:
        link = {
            "token_hash": token_hash,
            "config_encrypted": config_encrypted,
            "created_at": now,
            "expires_at": setup_expires_at,
            "used_at": None,
        }
        await repository.insert_device_and_link(db, new_device, link)
    moved = await sessions.hand_over(db, user_id, now)
    await gateway_desired.bump_revision(
        db, moved - {gateway.id} if new_device else moved, bus, [user_id]
    )
    drawn = await repository.session_of_device(db, device_id)
    shown = drawn or named or (usable[0] if usable else None)
    return GeneratedProfile(
        connect_id=device_id,
        session_id=shown.id if shown is not None else None,
        data_limit_bytes=shown.data_limit_bytes if shown is not None else 0,
        session_expires_at=shown.expires_at if shown is not None else None,
        region=gateway.region_code,
        gateway_name=gateway.name,
        config_text=config_text,
        setup_token=setup_token,
        download_token=issue_download_token(secrets, device_id, token_hash, setup_expires_at),
        setup_expires_at=setup_expires_at,
        rotated=rotated,
        region_note=region_note,
        state=device_state(drawn, bool(usable)),
    )


def device_state(drawn: DataSession | None, has_usable: bool) -> str:
    """`active`: the device draws from a session; `waiting`: the person has a session but
    this device is beyond its device limit; `garden`: no usable session at all."""
    if drawn is not None:
        return "active"
    return "waiting" if has_usable else "garden"


def _client_config(
    settings: Settings,
    gateway: Gateway,
    dns_servers: list[str],
    ipv4: str,
    ipv6: str,
    private_key: WireguardKey,
    preshared_key: WireguardKey,
) -> ClientConfig:
    return ClientConfig(
        private_key=private_key,
        ipv4=IPv4Address(ipv4.split("/")[0]),
        ipv6=IPv6Address(ipv6.split("/")[0]),
        dns_servers=parse_dns_servers(", ".join(dns_servers) or FALLBACK_DNS),
        mtu=settings.wireguard_mtu,
        peer_public_key=WireguardKey.from_base64(gateway.public_key),
        preshared_key=preshared_key,
        endpoint=gateway.endpoint,
    )


def links(
    settings: Settings, device_id: str, setup_token: str, download_token: str
) -> dict[str, str]:
    """Absolute URLs of the setup page and the two downloads."""
    base = settings.public_url.rstrip("/")
    profile = f"{base}/api/connect/profiles/{device_id}"
    return {
        "setup_url": f"{base}/setup/{setup_token}",
        "config_url": f"{profile}/config?t={download_token}",
        "mobileconfig_url": f"{profile}/mobileconfig?t={download_token}",
    }


def tunnel_filename() -> str:
    """See `setup_page.tunnel_filename` (the web pages' downloads use the same rule)."""
    return setup_page.tunnel_filename()


def mac_mobileconfig_url(mobileconfig_url: str) -> str:
    """The Apple profile for a Mac (the WireGuard app for macOS takes only its own kind)."""
    return f"{mobileconfig_url}&os=macos"


def to_response(generated: GeneratedProfile, settings: Settings) -> ConnectProfileResponse:
    """The product note's response shape; `data_limit_mb` is the session's own limit. The
    Connect QR Code holds the setup link (a phone's camera opens it); `config_qr` the config
    itself (for the WireGuard app's own scanner).

    Pure and CPU-bound (QR encoding, a few milliseconds): call it after the transaction
    committed.
    """
    urls = links(settings, generated.connect_id, generated.setup_token, generated.download_token)
    profile_qr, profile_qr_svg = qr.png_data_uri_and_svg(urls["setup_url"])
    config_qr, config_qr_svg = qr.png_data_uri_and_svg(generated.config_text)
    return ConnectProfileResponse(
        success=True,
        connect_id=generated.connect_id,
        profile_qr=profile_qr,
        session_id=generated.session_id,
        data_limit_mb=generated.data_limit_bytes // MIB,
        profile_type="kswifi_connect",
        setup_instructions=list(SETUP_INSTRUCTIONS),
        access_method="secure_profile",
        region=generated.region,
        region_note=generated.region_note,
        gateway=generated.gateway_name,
        expires_at=generated.session_expires_at,
        state=generated.state,
        rotated=generated.rotated,
        profile_qr_svg=profile_qr_svg,
        config_qr=config_qr,
        config_qr_svg=config_qr_svg,
        **urls,
    )


# --- downloads ------------------------------------------------------------------------------


def issue_download_token(
    secrets: SecretBox, device_id: str, link_token_hash: str, expires_at: datetime
) -> str:
    """`<link hash>.<unix expiry>.<signature>`: names the setup link row holding the config.

    The link's hash cannot open the setup page (that needs the token itself), so download
    URLs can be shown and embedded freely; they die with the link.
    """
    expiry = int(expires_at.timestamp())
    return f"{link_token_hash}.{expiry}.{_sign(secrets, device_id, link_token_hash, expiry)}"


def _sign(secrets: SecretBox, device_id: str, link_token_hash: str, expiry: int) -> str:
    message = f"{_DOWNLOAD_PURPOSE}:{device_id}:{link_token_hash}:{expiry}"
    return secrets.sign(message)[:_SIGNATURE_CHARS]


def read_download_token(secrets: SecretBox, device_id: str, token: str, now: datetime) -> str:
    """The setup link hash of a valid token; NotFound if forged, Gone if expired."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1].isdigit() or len(parts[1]) > 12:
        raise NotFound("No such Connect Profile")
    link_hash, expiry_text, signature = parts
    expected = _sign(secrets, device_id, link_hash, int(expiry_text))
    if not hmac.compare_digest(expected, signature):
        raise NotFound("No such Connect Profile")
    if datetime.fromtimestamp(int(expiry_text), UTC) <= now:
        raise Gone("This download link has expired. Generate your Connect Code again.")
    return link_hash


async def get_download(
    db: AsyncSession,
    secrets: SecretBox,
    *,
    device_id: str,
    download_token: str | None,
    user_id: str | None,
    now: datetime,
) -> ProfileDownload:
    """The config of a device, for the bearer of a download token or for its owner."""
    if download_token is not None:
        link_hash = read_download_token(secrets, device_id, download_token, now)
        device = await repository.get_device(db, device_id)
        if device is None or device.status != repository.ACTIVE:
            raise NotFound("No such Connect Profile")
        link = await repository.get_setup_link(db, link_hash)
        if link is None or link.device_id != device.id or link.expires_at <= now:
            raise Gone("This download link has expired. Generate your Connect Code again.")
    else:
        if user_id is None:
            raise Unauthorized()
        device = await _own_active_device(db, user_id, device_id)
        link = await repository.latest_live_setup_link(db, device.id, now)
        if link is None:
            raise Gone(
                "This profile can no longer be downloaded (its keys are not kept). "
                "Generate your Connect Code again."
            )
    gateway = await repository.get_gateway(db, device.gateway_id)
    endpoint = gateway.endpoint if gateway is not None else ""
    return ProfileDownload(
        device_id=device.id, config_text=secrets.decrypt(link.config_encrypted), endpoint=endpoint
    )


# --- setup link -----------------------------------------------------------------------------


async def open_setup_link(
    db: AsyncSession, secrets: SecretBox, token: str, now: datetime
) -> OpenedSetupLink:
    """Use a setup link (once); downloads from the page keep working until it expires."""
    token_hash = hash_token(token)
    if not await repository.claim_setup_link(db, token_hash, now):
        link = await repository.get_setup_link(db, token_hash)
        if link is None:
            raise NotFound("This setup link is not valid.")
        if link.used_at is not None:
            raise Gone("This setup link was already used.")
        raise Gone("This setup link has expired.")
    link = await repository.get_setup_link(db, token_hash)
    if link is None:  # pragma: no cover - claimed in this transaction
        raise NotFound("This setup link is not valid.")
    device = await repository.get_device(db, link.device_id)
    if device is None or device.status != repository.ACTIVE:
        raise Gone("This Connect Profile was removed.")
    # Installing works with or without a session: a device without one is in the garden,
    # where the phone can still reach the shop.
    return OpenedSetupLink(
        device_id=device.id,
        download_token=issue_download_token(secrets, device.id, token_hash, link.expires_at),
        expires_at=link.expires_at,
        config_text=secrets.decrypt(link.config_encrypted),
    )


# --- listing and removal --------------------------------------------------------------------


async def _own_active_device(db: AsyncSession, user_id: str, device_id: str) -> Device:
    device = await repository.get_device(db, device_id)
    if device is None or device.user_id != user_id or device.status != repository.ACTIVE:
        raise NotFound("No such Connect Profile")
    return device


async def list_profiles(db: AsyncSession, user_id: str, now: datetime) -> ConnectProfileList:
    has_usable = bool(await sessions.usable_sessions(db, user_id, now))
    return ConnectProfileList(
        profiles=[
            _to_out(device, gateway, drawn, has_usable)
            for device, gateway, drawn in await repository.list_for_user(db, user_id)
        ]
    )


async def get_profile(
    db: AsyncSession, user_id: str, device_id: str, now: datetime
) -> ConnectProfileOut:
    device = await _own_active_device(db, user_id, device_id)
    gateway = await repository.get_gateway(db, device.gateway_id)
    if gateway is None:  # pragma: no cover - foreign key
        raise NotFound("No such Connect Profile")
    drawn = await repository.session_of_device(db, device.id)
    has_usable = bool(await sessions.usable_sessions(db, user_id, now))
    return _to_out(device, gateway, drawn, has_usable)


def _to_out(
    device: Device, gateway: Gateway, drawn: DataSession | None, has_usable: bool
) -> ConnectProfileOut:
    return ConnectProfileOut(
        connect_id=device.id,
        session_id=drawn.id if drawn is not None else None,
        state=device_state(drawn, has_usable),
        device_name=device.device_name,
        region=gateway.region_code,
        gateway=gateway.name,
        ipv4=device.ipv4,
        ipv6=device.ipv6,
        created_at=device.created_at,
        last_handshake_at=device.last_handshake_at,
    )


async def rename_profile(
    db: AsyncSession,
    bus: EventBus,
    *,
    user_id: str,
    device_id: str,
    device_name: str,
    now: datetime,
) -> ConnectProfileOut:
    """A new name for one of the person's devices (names are one per device: the name is how
    generating again finds the device)."""
    await sessions.lock_person(db, user_id)
    device = await _own_active_device(db, user_id, device_id)
    taken = {
        d.device_name
        for d in await repository.active_devices_of_user(db, user_id)
        if d.id != device.id
    }
    if device_name in taken:
        raise Conflict(f"You already have a device named {device_name!r}.", field="device_name")
    renamed = device.device_name != device_name
    device.device_name = device_name
    await db.flush()
    if renamed:
        notices.announce(db, bus, device, "renamed")
    return await get_profile(db, user_id, device.id, now)


async def remove_profile(
    db: AsyncSession, bus: EventBus, *, user_id: str, device_id: str, now: datetime
) -> None:
    """The owner removes a device: it leaves its gateway, its address cools down for reuse,
    and a device of theirs waiting beyond the session's device limit takes its place."""
    await sessions.lock_person(db, user_id)  # as generate: the person first, then the device
    locked = await repository.get_device(db, device_id, for_update=True)
    if locked is None or locked.user_id != user_id or locked.status != repository.ACTIVE:
        raise NotFound("No such Connect Profile")
    await _remove_devices(db, bus, [locked], now)
    await gateway_desired.bump_revision(
        db, await sessions.hand_over(db, user_id, now), bus, [user_id]
    )


async def remove_all_profiles(
    db: AsyncSession, bus: EventBus, *, user_id: str, now: datetime
) -> int:
    """Every device of a person leaves its gateway (their account is being deleted), and no
    device of theirs keeps a name they gave it."""
    await sessions.lock_person(db, user_id)
    devices = await repository.active_devices_of_user(db, user_id)
    if devices:
        await _remove_devices(db, bus, devices, now)
    await repository.forget_device_names(db, user_id)
    return len(devices)


async def _remove_devices(
    db: AsyncSession, bus: EventBus, devices: list[Device], now: datetime
) -> None:
    for device in devices:
        device.status = repository.REMOVED
        device.removed_at = now
        await gateway_addresses.release_host(db, device.gateway_id, device.host_index, now)
        notices.announce(db, bus, device, "removed")
    await repository.delete_setup_links(db, [device.id for device in devices])
    await db.flush()
    await gateway_desired.bump_revision(
        db,
        sorted({device.gateway_id for device in devices}),
        bus,
        {device.user_id for device in devices},
    )


async def purge_expired_setup_links(db: AsyncSession, now: datetime) -> int:
    """Worker job: drop setup links past their lifetime with the encrypted configs they hold."""
    return await repository.delete_expired_setup_links(db, now)
