"""Setup links (single use, ten minutes) and the signed .conf / .mobileconfig downloads."""

from __future__ import annotations

import asyncio
import plistlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from kswifi.control.deps import AppContext
from kswifi.control.errors import Gone, NotFound
from kswifi.control.models import DataSession, SetupLink
from kswifi.control.profiles import qr, service
from kswifi.control.profiles.config_render import parse_config
from tests.control.profiles.conftest import (
    MakeOwner,
    MakeSession,
    Owner,
    RegisteredGateway,
    generate,
)
from tests.control.profiles.qr_decode import decode_data_uri

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Mobile Safari/537.36"
)
INSTRUCTIONS = [
    "1. Scan this QR code with your device camera",
    "2. Tap &#x27;Add&#x27; when prompted to install profile",
    "3. Enable &#x27;KSWiFi Connect&#x27; in your device settings",
    "4. Enjoy secure global internet access!",
]


def path_of(url: str) -> str:
    assert url.startswith("http://testserver/")
    return url.removeprefix("http://testserver")


@pytest.fixture
async def profile(
    client: httpx.AsyncClient,
    owner: Owner,
    make_session: MakeSession,
    gateway: RegisteredGateway,
) -> dict[str, Any]:
    session = await make_session(owner.id)
    response = await generate(client, owner, session.id)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def config_text(profile: dict[str, Any]) -> str:
    return decode_data_uri(profile["config_qr"])[0]


def links_in(page: str) -> list[str]:
    return [href.replace("&amp;", "&") for href in re.findall(r'href="([^"]+)"', page)]


class TestDownloads:
    async def test_config_with_token_needs_no_login(
        self, client: httpx.AsyncClient, profile: dict[str, Any]
    ) -> None:
        response = await client.get(path_of(profile["config_url"]))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        disposition = response.headers["content-disposition"]
        assert re.fullmatch(r'attachment; filename="kswifi-[0-9a-f]{4}\.conf"', disposition)
        assert response.headers["cache-control"] == "no-store"
        assert response.text == config_text(profile)

    async def test_mobileconfig_with_token(
        self, client: httpx.AsyncClient, profile: dict[str, Any], gateway: RegisteredGateway
    ) -> None:
        response = await client.get(path_of(profile["mobileconfig_url"]))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/x-apple-aspen-config"
        document = plistlib.loads(response.content)
        [payload] = document["PayloadContent"]
        assert payload["PayloadType"] == "com.apple.vpn.managed"
        assert payload["VPNSubType"] == "com.wireguard.ios"
        assert payload["UserDefinedName"] == "KSWiFi Connect"
        assert payload["VendorConfig"]["WgQuickConfig"] == config_text(profile)
        assert payload["VPN"]["RemoteAddress"] == gateway.endpoint
        again = plistlib.loads((await client.get(path_of(profile["mobileconfig_url"]))).content)
        assert again["PayloadIdentifier"] == document["PayloadIdentifier"]  # replaces it
        assert again["PayloadUUID"] != document["PayloadUUID"]  # a new document
        mac = plistlib.loads(
            (await client.get(path_of(profile["mobileconfig_url"]) + "&os=macos")).content
        )
        assert mac["PayloadContent"][0]["VPNSubType"] == "com.wireguard.macos"

    @pytest.mark.parametrize("kind", ["config", "mobileconfig"])
    async def test_owner_without_token(
        self, client: httpx.AsyncClient, owner: Owner, profile: dict[str, Any], kind: str
    ) -> None:
        url = f"/api/connect/profiles/{profile['connect_id']}/{kind}"
        assert (await client.get(url)).status_code == 401
        response = await client.get(url, headers=owner.headers)
        assert response.status_code == 200
        if kind == "config":
            assert response.text == config_text(profile)

    @pytest.mark.parametrize("kind", ["config", "mobileconfig"])
    async def test_another_user_gets_404(
        self,
        client: httpx.AsyncClient,
        make_owner: MakeOwner,
        profile: dict[str, Any],
        kind: str,
    ) -> None:
        stranger = await make_owner()
        url = f"/api/connect/profiles/{profile['connect_id']}/{kind}"
        response = await client.get(url, headers=stranger.headers)
        assert response.status_code == 404
        missing = await client.get(
            f"/api/connect/profiles/{'0' * 32}/{kind}", headers=stranger.headers
        )
        assert missing.status_code == 404
        assert response.json() == missing.json()

    async def test_forged_or_misplaced_token_is_404(
        self,
        client: httpx.AsyncClient,
        owner: Owner,
        make_session: MakeSession,
        profile: dict[str, Any],
    ) -> None:
        token = profile["config_url"].split("?t=", 1)[1]
        base = f"/api/connect/profiles/{profile['connect_id']}/config"
        link_hash, expiry, signature = token.split(".")
        flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
        for bad in (
            f"{link_hash}.{expiry}.{flipped}",
            f"{link_hash}.{int(expiry) + 3600}.{signature}",
            "garbage",
            "a.b.c",
        ):
            assert (await client.get(base, params={"t": bad})).status_code == 404
        # A token is bound to its device.
        other = await generate(
            client, owner, (await make_session(owner.id)).id, device_name="other"
        )
        other_id = other.json()["connect_id"]
        response = await client.get(f"/api/connect/profiles/{other_id}/config", params={"t": token})
        assert response.status_code == 404

    async def test_expired_link_makes_downloads_410(
        self, client: httpx.AsyncClient, ctx: AppContext, owner: Owner, profile: dict[str, Any]
    ) -> None:
        async with ctx.db.transaction() as db:
            await db.execute(
                update(SetupLink).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        response = await client.get(path_of(profile["config_url"]))
        assert response.status_code == 410
        assert response.json()["error"]["code"] == "gone"
        owner_response = await client.get(
            f"/api/connect/profiles/{profile['connect_id']}/config", headers=owner.headers
        )
        assert owner_response.status_code == 410

    def test_token_expiry_is_signed(self, ctx: AppContext) -> None:
        now = datetime.now(UTC)
        token = service.issue_download_token(
            ctx.secrets, "dev1", "ab" * 32, now + timedelta(minutes=10)
        )
        assert service.read_download_token(ctx.secrets, "dev1", token, now) == "ab" * 32
        with pytest.raises(Gone):
            service.read_download_token(ctx.secrets, "dev1", token, now + timedelta(minutes=11))
        with pytest.raises(NotFound):
            service.read_download_token(ctx.secrets, "dev2", token, now)


class TestSetupPage:
    async def test_iphone_gets_the_apple_profile_and_the_instructions(
        self, client: httpx.AsyncClient, ctx: AppContext, profile: dict[str, Any]
    ) -> None:
        response = await client.get(path_of(profile["setup_url"]), headers={"User-Agent": IPHONE})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in response.headers["content-security-policy"]
        page = response.text
        assert "<title>KSWiFi Connect Setup</title>" in page
        assert "Install the KSWiFi Connect Profile" in page
        assert "apps.apple.com/app/wireguard/id1441195209" in page  # the app, if needed
        for step in INSTRUCTIONS:
            assert step in page
        assert "VPN" not in page and "eSIM" not in page
        mobileconfig_links = [link for link in links_in(page) if "/mobileconfig?t=" in link]
        assert len(mobileconfig_links) == 1
        assert not [link for link in links_in(page) if "/config?t=" in link]
        # The page's download works right after the link was used.
        download = await client.get(path_of(mobileconfig_links[0]))
        assert download.status_code == 200
        assert download.headers["content-type"] == "application/x-apple-aspen-config"
        async with ctx.db.transaction() as db:
            link = await db.scalar(select(SetupLink))
            assert link is not None and link.used_at is not None

    async def test_android_gets_the_conf_and_the_app(
        self, client: httpx.AsyncClient, profile: dict[str, Any]
    ) -> None:
        response = await client.get(path_of(profile["setup_url"]), headers={"User-Agent": ANDROID})
        assert response.status_code == 200
        page = response.text
        assert "play.google.com/store/apps/details?id=com.wireguard.android" in page
        assert "VPN" not in page and "eSIM" not in page
        [conf_link] = [link for link in links_in(page) if "/config?t=" in link]
        assert "/mobileconfig" not in page
        download = await client.get(path_of(conf_link))
        assert download.status_code == 200
        assert download.text == config_text(profile)
        parse_config(download.text)
        # The config's own code, for the WireGuard app's scanner, is on the page too.
        [code] = re.findall(r'<img src="([^"]+)" alt="Code for the WireGuard app"', page)
        assert decode_data_uri(code)[0] == config_text(profile)

    async def test_other_browsers_get_both(
        self, client: httpx.AsyncClient, profile: dict[str, Any]
    ) -> None:
        page = (
            await client.get(path_of(profile["setup_url"]), headers={"User-Agent": "curl/8"})
        ).text
        assert any("/mobileconfig?t=" in link for link in links_in(page))
        assert any("/config?t=" in link for link in links_in(page))

    async def test_second_use_is_410(
        self, client: httpx.AsyncClient, profile: dict[str, Any]
    ) -> None:
        first = await client.get(path_of(profile["setup_url"]))
        assert first.status_code == 200
        second = await client.get(path_of(profile["setup_url"]))
        assert second.status_code == 410
        assert "This setup link was already used" in second.text
        assert "<title>KSWiFi Connect Setup</title>" in second.text
        assert "Install the KSWiFi Connect Profile" not in second.text

    async def test_expired_link_is_410(
        self, client: httpx.AsyncClient, ctx: AppContext, profile: dict[str, Any]
    ) -> None:
        async with ctx.db.transaction() as db:
            await db.execute(
                update(SetupLink).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        response = await client.get(path_of(profile["setup_url"]))
        assert response.status_code == 410
        assert "expired" in response.text
        async with ctx.db.transaction() as db:
            link = await db.scalar(select(SetupLink))
            assert link is not None and link.used_at is None

    async def test_link_lives_ten_minutes(self, ctx: AppContext, profile: dict[str, Any]) -> None:
        async with ctx.db.transaction() as db:
            link = await db.scalar(select(SetupLink))
            assert link is not None
            assert link.expires_at - link.created_at <= timedelta(minutes=10, seconds=5)
            assert link.expires_at - datetime.now(UTC) > timedelta(minutes=9)

    async def test_link_of_a_device_whose_session_ended_still_installs(
        self, client: httpx.AsyncClient, ctx: AppContext, profile: dict[str, Any]
    ) -> None:
        """The profile outlives the session: installed, the phone reaches the shop."""
        async with ctx.db.transaction() as db:
            await db.execute(
                update(DataSession)
                .where(DataSession.id == profile["session_id"])
                .values(status="revoked")
            )
        response = await client.get(path_of(profile["setup_url"]))
        assert response.status_code == 200
        assert "/config?t=" in response.text

    async def test_unknown_link_is_404(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/setup/not-a-real-token")
        assert response.status_code == 404
        assert "not valid" in response.text

    async def test_concurrent_opens_only_one_wins(
        self, client: httpx.AsyncClient, profile: dict[str, Any]
    ) -> None:
        responses = await asyncio.gather(
            *(client.get(path_of(profile["setup_url"])) for _ in range(5))
        )
        assert sorted(response.status_code for response in responses) == [200, 410, 410, 410, 410]

    async def test_token_is_long_and_not_stored(
        self, ctx: AppContext, profile: dict[str, Any]
    ) -> None:
        token = profile["setup_url"].rsplit("/", 1)[1]
        assert len(token) >= 22  # ≥ 128 bits, URL-safe base64
        async with ctx.db.transaction() as db:
            stored = list(await db.scalars(select(SetupLink.token_hash)))
            assert token not in stored


async def test_the_connect_qr_code_is_a_small_code_of_the_setup_link(
    profile: dict[str, Any],
) -> None:
    """A phone's camera opens what the Connect QR Code holds: the setup link, in a code small
    enough to scan from a screen at arm's length (version 5 or less: at most 37 modules)."""
    assert decode_data_uri(profile["profile_qr"])[0] == profile["setup_url"]
    matrix = qr.encode(profile["setup_url"])
    assert matrix.size <= 37, matrix.size
