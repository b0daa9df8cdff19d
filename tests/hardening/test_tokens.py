"""Forged, expired and confused tokens on every surface that reads them.

tests/control/users already refuses, on /api/auth/me: tampered payloads and signatures,
`alg: none`, another key, wrong `typ`, expiry, missing or disabled users, and refresh-token
reuse revoking the whole family (tests/web/test_auth_pages.py does the same for the cookie).
What is added here: the same access-token forgeries plus algorithm substitution with the right
key and a missing `exp`, tried on each place a token is read (bearer API, the usage stream's
bearer-or-cookie, the web pages' cookie); operator rights read from the database, not the token;
and gateway tokens that were rotated or belong to a disabled gateway.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import update

from kswifi.control.deps import WEB_ACCESS_COOKIE
from kswifi.control.models import User
from tests.hardening.conftest import World

# Forging with the right key under a longer hash is the point; PyJWT warns about its length.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


def _claims(world: World) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        world.owner.access_token, options={"verify_signature": False}
    )
    return claims


def _key(world: World) -> bytes:
    key: bytes = world.ctx.secrets._signing_key  # the derived HMAC key the app signs with
    return key


FORGERIES: dict[str, Callable[[World], str]] = {
    "alg none": lambda w: jwt.encode(_claims(w), None, algorithm="none"),
    "alg none, no signature part": lambda w: jwt.encode(_claims(w), None, algorithm="none").rstrip(
        "."
    ),
    "HS512 with the right key": lambda w: jwt.encode(_claims(w), _key(w), algorithm="HS512"),
    "HS384 with the right key": lambda w: jwt.encode(_claims(w), _key(w), algorithm="HS384"),
    "HS256 with the secret key itself (not the derived key)": lambda w: jwt.encode(
        _claims(w), w.ctx.settings.secret_key.get_secret_value(), algorithm="HS256"
    ),
    "no exp": lambda w: jwt.encode(
        {k: v for k, v in _claims(w).items() if k != "exp"}, _key(w), algorithm="HS256"
    ),
    "expired": lambda w: w.ctx.secrets.issue_access_token(w.owner.id, False, timedelta(seconds=-5)),
    "exp far past, right key": lambda w: jwt.encode(
        {**_claims(w), "exp": int(time.time()) - 86_400}, _key(w), algorithm="HS256"
    ),
    "another user's signature": lambda w: ".".join(
        w.owner.access_token.split(".")[:2] + w.other.access_token.split(".")[2:]
    ),
    "refresh token as access token": lambda w: w.owner.refresh_token,
    "gateway token as access token": lambda w: w.gw_a.token,
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
async def test_forged_access_tokens_are_refused_everywhere(
    client: httpx.AsyncClient, world: World, forgery: str
) -> None:
    token = FORGERIES[forgery](world)
    bearer = {"Authorization": f"Bearer {token}"}
    cookie = {"Cookie": f"{WEB_ACCESS_COOKIE}={token}"}
    history = f"/api/sessions/{world.owner_session}/usage/history"
    assert (await client.get("/api/auth/me", headers=bearer)).status_code == 401
    assert (await client.get("/api/sessions", headers=bearer)).status_code == 401
    assert (await client.get(history, headers=bearer)).status_code == 401
    assert (await client.get(history, headers=cookie)).status_code == 401
    page = await client.get(f"/sessions/{world.owner_session}", headers=cookie)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    # The genuine token still works: the refusals are about the forgery.
    assert (await client.get("/api/auth/me", headers=world.owner.headers)).status_code == 200


async def test_operator_rights_come_from_the_database(
    client: httpx.AsyncClient, world: World
) -> None:
    async with world.ctx.db.transaction() as db:
        await db.execute(update(User).where(User.id == world.admin.id).values(is_admin=False))
    # The access token still says `adm: true`; the account no longer is an operator.
    assert (
        _claims(world) != {}
        and jwt.decode(world.admin.access_token, options={"verify_signature": False})["adm"]
    )
    assert (await client.get("/api/admin/users", headers=world.admin.headers)).status_code == 403
    page = await client.get(
        "/admin/users", headers={"Cookie": f"{WEB_ACCESS_COOKIE}={world.admin.access_token}"}
    )
    assert page.status_code == 404


async def test_rotated_and_disabled_gateway_tokens_are_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    path = "/api/gateway/v1/desired-state"
    assert (await client.get(path, headers=world.gw_c.headers)).status_code == 200
    rotated = await client.post(
        f"/api/admin/gateways/{world.gw_c.id}/rotate-token", headers=world.admin.headers
    )
    assert rotated.status_code == 200
    assert (await client.get(path, headers=world.gw_c.headers)).status_code == 401
    fresh = {"Authorization": f"Bearer {rotated.json()['token']}"}
    assert (await client.get(path, headers=fresh)).status_code == 200
    disabled = await client.post(
        f"/api/admin/gateways/{world.gw_c.id}/disable", headers=world.admin.headers
    )
    assert disabled.status_code == 200
    assert (await client.get(path, headers=fresh)).status_code == 401
    usage = {"sequence": 1, "sent_at": "2026-01-01T00:00:00Z", "deltas": []}
    assert (
        await client.post("/api/gateway/v1/usage", json=usage, headers=fresh)
    ).status_code == 401
