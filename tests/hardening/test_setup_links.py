"""Setup links and download tokens: unguessable, single use, short-lived, bound to one device.

tests/control/profiles/test_links.py covers the basics (second use 410, ten minutes, expired
410, concurrent opens, downloads with the token / the owner / another user / a forged token).
Added here: the randomness of the link (≥ 128 bits, never repeated), the link dying when the
keys rotate, the token bound to its device, no caching or referrer leaks, and the link being
useless as a login.
"""

from __future__ import annotations

import base64
import math
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy import update

from kswifi.control.models import SetupLink, utcnow
from tests.hardening.conftest import World, generate


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def test_links_carry_at_least_128_random_bits(
    client: httpx.AsyncClient, world: World
) -> None:
    tokens = []
    for number in range(12):
        body = await generate(
            client, world.owner, world.owner_session, "eu-west", "phone" if number % 2 else "tablet"
        )
        tokens.append(body["setup_url"].rsplit("/", 1)[1])
    assert len(set(tokens)) == len(tokens)
    for token in tokens:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        assert len(raw) * 8 >= 128
    # Every character position varies across links (a counter or a timestamp would not).
    alphabet_bits = math.log2(64)
    assert len(tokens[0]) * alphabet_bits >= 128
    assert all(len({t[i] for t in tokens}) > 1 for i in range(0, len(tokens[0]) - 1, 4))


async def test_rotation_kills_the_old_link_and_downloads(
    client: httpx.AsyncClient, world: World
) -> None:
    old_setup = f"/setup/{world.owner_phone.setup_token}"
    old_config = (
        f"/api/connect/profiles/{world.owner_phone.id}/config?t={world.owner_phone.download_token}"
    )
    assert (await client.get(old_config)).status_code == 200
    # Shown again: the same profile, its links still work.
    await generate(client, world.owner, world.owner_session, "eu-west", "phone")
    assert (await client.get(old_config)).status_code == 200
    await generate(client, world.owner, world.owner_session, "eu-west", "phone", rotate=True)
    assert (await client.get(old_setup)).status_code in (404, 410)
    assert (await client.get(old_config)).status_code in (404, 410)


async def test_download_token_is_bound_to_its_device(
    client: httpx.AsyncClient, world: World
) -> None:
    token = world.owner_phone.download_token
    for device in (world.owner_tablet.id, world.other_device):
        for kind in ("config", "mobileconfig"):
            response = await client.get(f"/api/connect/profiles/{device}/{kind}?t={token}")
            assert response.status_code == 404, (device, kind)
    # Changing any part of the token (the link hash, the expiry, the signature) forges it.
    link_hash, expiry, signature = token.split(".")
    for forged in (
        f"{link_hash[:-1]}{'0' if link_hash[-1] != '0' else '1'}.{expiry}.{signature}",
        f"{link_hash}.{int(expiry) + 3600}.{signature}",
        f"{link_hash}.{expiry}.{signature[:-1]}{'0' if signature[-1] != '0' else '1'}",
        f"{link_hash}.{expiry}.",
    ):
        path = f"/api/connect/profiles/{world.owner_phone.id}/config?t={forged}"
        assert (await client.get(path)).status_code == 404, forged


async def test_expired_link_serves_nobody(client: httpx.AsyncClient, world: World) -> None:
    """The client's private key lives only with the link: once it expires, not even the owner
    can download the config again (generating again, which rotates the keys, is the way)."""
    async with world.ctx.db.transaction() as db:
        await db.execute(update(SetupLink).values(expires_at=utcnow() - timedelta(seconds=1)))
    config = f"/api/connect/profiles/{world.owner_phone.id}/config"
    assert (await client.get(f"/setup/{world.owner_phone.setup_token}")).status_code == 410
    with_token = await client.get(f"{config}?t={world.owner_phone.download_token}")
    assert with_token.status_code in (404, 410)
    assert (await client.get(config)).status_code == 401
    assert (await client.get(config, headers=world.other.headers)).status_code == 404
    assert (await client.get(config, headers=world.owner.headers)).status_code == 410


async def test_no_caching_no_referrer_and_not_a_login(
    client: httpx.AsyncClient, world: World
) -> None:
    page = await client.get(f"/setup/{world.owner_phone.setup_token}")
    assert page.status_code == 200
    assert "no-store" in page.headers["cache-control"]
    assert page.headers["referrer-policy"] == "no-referrer"
    config = await client.get(
        f"/api/connect/profiles/{world.owner_phone.id}/config?t={world.owner_phone.download_token}"
    )
    assert config.status_code == 200 and "no-store" in config.headers["cache-control"]
    for token in (world.owner_phone.setup_token, world.owner_phone.download_token):
        headers = {"Authorization": f"Bearer {token}"}
        assert (await client.get("/api/auth/me", headers=headers)).status_code == 401
        assert (await client.get("/api/connect/profiles", headers=headers)).status_code == 401
        listed = await client.get(
            f"/api/connect/profiles/{world.owner_phone.id}/config", headers=headers
        )
        assert listed.status_code == 401
