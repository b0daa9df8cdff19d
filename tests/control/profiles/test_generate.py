"""POST /api/connect/generate-profile: the product note's response, keys, rotation, limits."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from kswifi.control.deps import AppContext
from kswifi.control.models import DataSession, Device, SetupLink
from kswifi.control.profiles.config_render import parse_config
from kswifi.control.profiles.service import MAX_PROFILES_PER_PERSON
from tests.control.profiles.conftest import (
    MakeGateway,
    MakeOwner,
    MakeSession,
    Owner,
    RegisteredGateway,
    desired_peers,
    gateway_row,
    generate,
)
from tests.control.profiles.qr_decode import decode_data_uri, decode_svg

WG = shutil.which("wg")
WG_QUICK = shutil.which("wg-quick")
NOTE_FIELDS = {
    "success",
    "connect_id",
    "profile_qr",
    "session_id",
    "data_limit_mb",
    "profile_type",
    "setup_instructions",
    "access_method",
}
EXTRA_FIELDS = {
    "region",
    "region_note",
    "gateway",
    "expires_at",
    "setup_url",
    "config_url",
    "mobileconfig_url",
    "profile_qr_svg",
    "state",
    "rotated",
    "config_qr",
    "config_qr_svg",
}
INSTRUCTIONS = [
    "1. Scan this QR code with your device camera",
    "2. Tap 'Add' when prompted to install profile",
    "3. Enable 'KSWiFi Connect' in your device settings",
    "4. Enjoy secure global internet access!",
]


def run_tool(args: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """A wireguard-tools command (quick, so run inline from the async test)."""
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=10)


async def count(ctx: AppContext, model: type[Device] | type[SetupLink]) -> int:
    async with ctx.db.transaction() as db:
        return int(await db.scalar(select(func.count()).select_from(model)) or 0)


async def load_session(ctx: AppContext, session_id: str) -> DataSession:
    async with ctx.db.transaction() as db:
        row = await db.get(DataSession, session_id)
        assert row is not None
        return row


class TestResponseShape:
    async def test_exact_fields_and_values(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        owner: Owner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
    ) -> None:
        session = await make_session(owner.id, "premium")
        before = datetime.now(UTC)
        response = await generate(client, owner, session.id)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == NOTE_FIELDS | EXTRA_FIELDS
        assert body["success"] is True
        assert body["session_id"] == session.id
        assert body["data_limit_mb"] == 5 * 1024
        assert body["profile_type"] == "kswifi_connect"
        assert body["setup_instructions"] == INSTRUCTIONS
        assert body["access_method"] == "secure_profile"
        assert body["region"] == "eu-west"
        assert body["gateway"] == gateway.name
        assert body["profile_qr"].startswith("data:image/png;base64,")
        assert body["profile_qr_svg"].startswith("<svg")
        # The Connect QR Code opens the setup page in a phone's camera; the config's own code
        # is for the WireGuard app's scanner.
        assert decode_data_uri(body["profile_qr"])[0] == body["setup_url"]
        assert decode_svg(body["profile_qr_svg"])[0] == body["setup_url"]
        assert decode_data_uri(body["config_qr"])[0].startswith("[Interface]")
        connect_id = body["connect_id"]
        assert body["setup_url"].startswith("http://testserver/setup/")
        assert body["config_url"].startswith(
            f"http://testserver/api/connect/profiles/{connect_id}/config?t="
        )
        assert body["mobileconfig_url"].startswith(
            f"http://testserver/api/connect/profiles/{connect_id}/mobileconfig?t="
        )
        assert body["state"] == "active" and body["rotated"] is False
        # The clock starts at the phone's first byte through a gateway, not here.
        assert body["expires_at"] is None
        stored = await load_session(ctx, session.id)
        assert stored.activated_at is None and stored.expires_at is None
        assert stored.activation_deadline > before

    async def test_data_limit_is_the_sessions_whatever_the_client_sends(
        self,
        client: httpx.AsyncClient,
        owner: Owner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
    ) -> None:
        session = await make_session(owner.id, "basic")
        response = await generate(client, owner, session.id, data_limit_mb=999_999)
        assert response.status_code == 200, response.text
        assert response.json()["data_limit_mb"] == 1024

    @pytest.mark.parametrize(
        "body",
        [
            {"session_id": 123},
            {"session_id": ""},
            {"session_id": "x", "region": 5},
            {"session_id": "x", "region": "EU WEST"},
            {"session_id": "x", "device_name": ""},
            {"session_id": "x", "device_name": "a" * 65},
            {"session_id": "x", "device_name": "bad\nname"},
        ],
    )
    async def test_wrong_types_are_422(
        self, client: httpx.AsyncClient, ctx: AppContext, owner: Owner, body: dict[str, object]
    ) -> None:
        response = await client.post(
            "/api/connect/generate-profile", json=body, headers=owner.headers
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"
        assert await count(ctx, Device) == 0

    async def test_no_session_at_all_is_409_and_writes_nothing(
        self, client: httpx.AsyncClient, ctx: AppContext, owner: Owner, gateway: RegisteredGateway
    ) -> None:
        response = await client.post(
            "/api/connect/generate-profile", json={}, headers=owner.headers
        )
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["code"] == "session_not_usable"
        assert error["message"] == "You have no data session. Buy one to set up a device."
        assert await count(ctx, Device) == 0

    async def test_needs_a_token(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/api/connect/generate-profile", json={"session_id": "x"})
        assert response.status_code == 401

    async def test_openapi_documents_200(self, client: httpx.AsyncClient) -> None:
        schema = (await client.get("/api/openapi.json")).json()
        operation = schema["paths"]["/api/connect/generate-profile"]["post"]
        assert "200" in operation["responses"]
        assert "/setup/{token}" not in schema["paths"]


class TestConfig:
    async def test_qr_decodes_to_a_config_matching_the_desired_state(
        self,
        client: httpx.AsyncClient,
        owner: Owner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
        tmp_path: Path,
    ) -> None:
        session = await make_session(owner.id)
        body = (await generate(client, owner, session.id)).json()
        text, level = decode_data_uri(body["config_qr"])
        assert level == "M"
        assert decode_svg(body["config_qr_svg"])[0] == text
        assert "#" not in text
        config = parse_config(text)
        assert str(config.peer_public_key) == gateway.public_key
        assert config.endpoint == gateway.endpoint
        assert config.allowed_ips == ("0.0.0.0/0", "::/0")
        assert config.persistent_keepalive == 25
        assert config.mtu == 1280
        assert config.dns_servers == ("1.1.1.1", "2606:4700:4700::1111")
        assert config.ipv4.is_private or str(config.ipv4).startswith("100.")

        [peer] = await desired_peers(client, gateway)
        assert peer["public_key"] == str(config.private_key.public_key())
        assert peer["preshared_key"] == str(config.preshared_key)
        assert peer["session_id"] == session.id
        assert sorted(peer["allowed_ips"]) == sorted([f"{config.ipv4}/32", f"{config.ipv6}/128"])

        if WG is not None:
            derived = run_tool([WG, "pubkey"], stdin=str(config.private_key) + "\n")
            assert derived.returncode == 0, derived.stderr
            assert derived.stdout.strip() == peer["public_key"]
        if WG_QUICK is not None:
            path = tmp_path / "kswifi0.conf"
            path.write_text(text)
            path.chmod(0o600)
            stripped = run_tool([WG_QUICK, "strip", str(path)])
            assert stripped.returncode == 0, stripped.stderr
            assert f"PrivateKey = {config.private_key}" in stripped.stdout
            assert "Address" not in stripped.stdout and "DNS" not in stripped.stdout

    async def test_private_key_is_stored_only_encrypted(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        owner: Owner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
    ) -> None:
        session = await make_session(owner.id)
        body = (await generate(client, owner, session.id)).json()
        private_key = str(parse_config(decode_data_uri(body["config_qr"])[0]).private_key)
        async with ctx.db.transaction() as db:
            device = await db.get(Device, body["connect_id"])
            assert device is not None
            # Kept so the person can show the installed profile again; never in the clear.
            assert device.private_key_encrypted is not None
            assert private_key not in device.private_key_encrypted
            assert ctx.secrets.decrypt(device.private_key_encrypted) == private_key
            assert private_key not in device.preshared_key_encrypted
            link = await db.scalar(select(SetupLink))
            assert link is not None
            assert private_key not in link.config_encrypted  # encrypted at rest
            assert body["setup_url"].rsplit("/", 1)[1] != link.token_hash  # stored hashed
            assert ctx.secrets.decrypt(link.config_encrypted).startswith("[Interface]")


class TestShowAgainAndRotation:
    async def test_same_device_name_shows_the_same_profile_again(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        owner: Owner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
    ) -> None:
        session = await make_session(owner.id, "basic")
        first = (await generate(client, owner, session.id, device_name="Phone")).json()
        revision_before = (await gateway_row(ctx, gateway.id)).revision
        again = await generate(client, owner, session.id, device_name="Phone")
        assert again.status_code == 200, again.text
        second = again.json()
        assert second["connect_id"] == first["connect_id"]
        assert second["rotated"] is False and first["rotated"] is False
        old = parse_config(decode_data_uri(first["config_qr"])[0])
        new = parse_config(decode_data_uri(second["config_qr"])[0])
        assert new == old  # the installed profile keeps working: same keys, same address
        assert (await gateway_row(ctx, gateway.id)).revision == revision_before
        assert await count(ctx, Device) == 1
        # Both responses' downloads work (nothing was retired).
        for body in (first, second):
            download = await client.get(body["config_url"].replace("http://testserver", ""))
            assert download.status_code == 200

    async def test_rotate_gives_new_keys_and_keeps_the_address(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        owner: Owner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
    ) -> None:
        session = await make_session(owner.id, "basic")  # one device allowed
        first = (await generate(client, owner, session.id, device_name="Phone")).json()
        revision_before = (await gateway_row(ctx, gateway.id)).revision
        second_response = await generate(
            client, owner, session.id, device_name="Phone", rotate=True
        )
        assert second_response.status_code == 200, second_response.text
        second = second_response.json()
        assert second["connect_id"] == first["connect_id"]
        assert second["rotated"] is True
        old = parse_config(decode_data_uri(first["config_qr"])[0])
        new = parse_config(decode_data_uri(second["config_qr"])[0])
        assert (new.ipv4, new.ipv6) == (old.ipv4, old.ipv6)
        assert new.private_key != old.private_key
        assert new.preshared_key != old.preshared_key
        assert (await gateway_row(ctx, gateway.id)).revision > revision_before
        peers = await desired_peers(client, gateway)
        keys = {peer["public_key"] for peer in peers}
        assert keys == {str(new.private_key.public_key())}
        assert str(old.private_key.public_key()) not in keys
        assert await count(ctx, Device) == 1
        # The first response's links carried the old keys: they are gone.
        old_download = await client.get(first["config_url"].replace("http://testserver", ""))
        assert old_download.status_code == 410

    async def test_default_device_name_is_one_device(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        owner: Owner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
    ) -> None:
        session = await make_session(owner.id, "basic")
        assert (await generate(client, owner, session.id)).status_code == 200
        assert (await generate(client, owner, session.id)).status_code == 200
        assert await count(ctx, Device) == 1

    async def test_rotation_in_another_region_is_refused(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        owner: Owner,
        make_session: MakeSession,
        make_gateway: MakeGateway,
        gateway: RegisteredGateway,
    ) -> None:
        await make_gateway(name="us-east-1", region="us-east", endpoint="gw2.example.net:51820")
        session = await make_session(owner.id)
        first = await generate(client, owner, session.id, region="eu-west", device_name="P")
        assert first.status_code == 200
        moved = await generate(client, owner, session.id, region="us-east", device_name="P")
        assert moved.status_code == 409
        assert moved.json()["error"]["code"] == "device_in_other_region"


class TestDeviceLimit:
    async def test_devices_past_the_sessions_limit_wait_and_past_the_cap_are_409(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        owner: Owner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
    ) -> None:
        session = await make_session(owner.id, "ultra")  # three devices at once
        states = []
        for index in range(MAX_PROFILES_PER_PERSON):
            response = await generate(client, owner, session.id, device_name=f"d{index}")
            assert response.status_code == 200, response.text
            states.append(response.json()["state"])
        assert states == ["active"] * 3 + ["waiting"] * (MAX_PROFILES_PER_PERSON - 3)
        # All ten are peers (installed once); only the three on the session have its quota.
        peers = await desired_peers(client, gateway)
        assert len(peers) == MAX_PROFILES_PER_PERSON
        assert sum(peer["session_id"] == session.id for peer in peers) == 3
        assert {peer["session_id"] for peer in peers} == {session.id, None}
        links_before = await count(ctx, SetupLink)
        refused = await generate(client, owner, session.id, device_name="one too many")
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert error["code"] == "device_limit_reached"
        assert f"{MAX_PROFILES_PER_PERSON} devices" in error["message"]
        assert await count(ctx, Device) == MAX_PROFILES_PER_PERSON
        assert await count(ctx, SetupLink) == links_before
        # Removing one that is on lets the first waiting one take its place.
        listed = (await client.get("/api/connect/profiles", headers=owner.headers)).json()
        by_name = {p["device_name"]: p for p in listed["profiles"]}
        assert by_name["d3"]["state"] == "waiting"
        removed = await client.delete(
            f"/api/connect/profiles/{by_name['d0']['connect_id']}", headers=owner.headers
        )
        assert removed.status_code == 204
        listed = (await client.get("/api/connect/profiles", headers=owner.headers)).json()
        by_name = {p["device_name"]: p for p in listed["profiles"]}
        assert by_name["d3"]["state"] == "active"
        assert by_name["d3"]["session_id"] == session.id
        # An installed device can still be shown again.
        assert (await generate(client, owner, session.id, device_name="d1")).status_code == 200


class TestSessionState:
    @pytest.mark.parametrize("status", ["exhausted", "expired", "revoked"])
    async def test_ended_session_is_409_and_nothing_is_written(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        owner: Owner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
        status: str,
    ) -> None:
        session = await make_session(owner.id, status=status)
        revision = (await gateway_row(ctx, gateway.id)).revision
        response = await generate(client, owner, session.id)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "session_not_usable"
        assert await count(ctx, Device) == 0
        assert await count(ctx, SetupLink) == 0
        assert (await gateway_row(ctx, gateway.id)).revision == revision
        stored = await load_session(ctx, session.id)
        assert stored.activated_at is None

    async def test_data_used_up_is_409(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        owner: Owner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
    ) -> None:
        session = await make_session(owner.id, "basic", used_bytes=1024**3)
        response = await generate(client, owner, session.id)
        assert response.status_code == 409
        assert await count(ctx, Device) == 0

    async def test_someone_elses_session_is_404(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        owner: Owner,
        make_owner: MakeOwner,
        make_session: MakeSession,
        gateway: RegisteredGateway,
    ) -> None:
        other = await make_owner()
        session = await make_session(other.id)
        response = await generate(client, owner, session.id)
        assert response.status_code == 404
        missing = await generate(client, owner, "0" * 32)
        assert missing.status_code == 404
        assert response.json()["error"] == missing.json()["error"]
        assert await count(ctx, Device) == 0


class TestPlacement:
    async def test_no_gateway_is_an_error_and_writes_nothing(
        self, client: httpx.AsyncClient, ctx: AppContext, owner: Owner, make_session: MakeSession
    ) -> None:
        session = await make_session(owner.id)
        response = await generate(client, owner, session.id)
        assert response.status_code == 503
        assert await count(ctx, Device) == 0
        assert (await load_session(ctx, session.id)).activated_at is None

    async def test_explicit_region_picks_its_gateway(
        self,
        client: httpx.AsyncClient,
        owner: Owner,
        make_session: MakeSession,
        make_gateway: MakeGateway,
        gateway: RegisteredGateway,
    ) -> None:
        other = await make_gateway(
            name="ap-1", region="ap-southeast", endpoint="[2001:db8::7]:51820"
        )
        session = await make_session(owner.id, "ultra")
        body = (await generate(client, owner, session.id, region="ap-southeast")).json()
        assert body["region"] == "ap-southeast"
        assert body["gateway"] == other.name
        config = parse_config(decode_data_uri(body["config_qr"])[0])
        assert config.endpoint == "[2001:db8::7]:51820"
        unknown = await generate(client, owner, session.id, region="mars-1", device_name="x")
        assert unknown.status_code == 422
