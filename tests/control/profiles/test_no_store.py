"""Issue 13: what carries a private key or a link to one is never kept by a cache."""

from __future__ import annotations

import httpx

from tests.control.profiles.conftest import MakeSession, Owner, RegisteredGateway, generate


async def test_profile_and_its_downloads_are_no_store(
    client: httpx.AsyncClient, owner: Owner, make_session: MakeSession, gateway: RegisteredGateway
) -> None:
    session = await make_session(owner.id)
    response = await generate(client, owner, session.id)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    for key in ("config_url", "mobileconfig_url"):
        url = str(body[key]).removeprefix("http://testserver")
        download = await client.get(url)
        assert download.status_code == 200, (key, download.text)
        assert download.headers["cache-control"].startswith("no-store"), key
        assert download.headers["x-content-type-options"] == "nosniff"
