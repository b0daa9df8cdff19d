"""Every route of the app × {anonymous, another gateway, another user, owner, operator}.

The matrix lists the expected status of each route for each role. A route the app serves that
is not in the matrix fails the test (a new route must say who may call it), and so does a matrix
entry for a route that no longer exists.

Roles: `anon` sends no credentials; `gateway` sends the token of gateway B, which carries none
of the owner's devices; `other` is another user with data of their own; `owner` owns the session,
purchase and devices in the paths (for `/api/gateway/v1/*`, the owner is gateway A, which carries
them); `admin` is an operator. The web pages get the same people through their login cookie,
and every form POST carries a valid CSRF token, so what answers is the authorization alone.

Besides the status, no answer to anyone but the owner (and the operator on operator routes)
may contain anything that identifies the owner's data: ids, e-mail, public keys.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, routing
from sqlalchemy import select

from kswifi.control.models import ALERT_KINDS, DataSession, Device
from tests.hardening.conftest import PASSWORD, World

ROLES = ("anon", "gateway", "other", "owner", "admin")
Expect = int | frozenset[int]

# Shorthands, in ROLES order.
PUBLIC = (200, 200, 200, 200, 200)
OWNER_ONLY = (401, 401, 404, 200, 404)  # someone else's resource answers like a missing one
EACH_THEIR_OWN = (401, 401, 200, 200, 200)
OPERATOR = (401, 401, 403, 403, 200)
AGENT = (401, 200, 401, 200, 401)  # any gateway, about itself; user tokens are not gateway tokens
WEB_OWNER_ONLY = (303, 303, 404, 200, 404)
WEB_LOGGED_IN = (303, 303, 200, 200, 200)
WEB_DONE = frozenset({200, 303})
CONSOLE = (303, 303, 404, 404, 200)
CONSOLE_POST = (303, 303, 404, 404, WEB_DONE)

Body = Callable[[World, str], dict[str, Any]]


@dataclass(frozen=True)
class Rule:
    method: str
    path: str
    expect: tuple[Expect, Expect, Expect, Expect, Expect]
    kind: str = "api"  # api | agent | web | public
    json: Body | None = None
    form: Body | None = None
    params: dict[str, str] | None = None
    query: Callable[[World, str], dict[str, str]] | None = None
    # The request itself carries a credential for the owner's data (their password, a setup
    # link): whoever holds it is answered as the owner, so the leak check does not apply.
    bearer_credential: bool = False
    operator_route: bool = False


def _fresh_email(_world: World, role: str) -> dict[str, Any]:
    return {"email": f"mx-{role}-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD}


def _own_refresh(world: World, role: str) -> dict[str, Any]:
    actor = {"other": world.other, "owner": world.owner, "admin": world.admin}.get(role)
    return {"refresh_token": actor.refresh_token if actor else "not-a-refresh-token"}


def _usage(world: World, role: str) -> dict[str, Any]:
    # Gateway A carries the owner's session; gateway B tries to bill it.
    sequence = {"owner": 1, "gateway": 1}.get(role, 7)
    return {
        "sequence": sequence,
        "sent_at": "2026-01-01T00:00:00Z",
        "deltas": [{"session_id": world.owner_session, "rx_bytes": 1000, "tx_bytes": 24}],
    }


def _heartbeat(world: World, role: str) -> dict[str, Any]:
    # Gateway B claims a handshake of the owner's phone: it must not mark the session connected.
    handshakes = {world.owner_phone.public_key: "2026-01-01T00:00:00Z"} if role == "gateway" else {}
    return {
        "agent_version": "matrix",
        "interface_mode": "userspace",
        "peer_count": 1,
        "applied_revision": 1,
        "handshakes": handshakes,
    }


def _new_plan(_world: World, role: str) -> dict[str, Any]:
    return {
        "code": f"mx-{role}-{uuid.uuid4().hex[:6]}",
        "name": "Matrix plan",
        "data_limit_mb": 10,
        "speed_mbps": 5,
        "validity_days": 1,
        "price_cents": 0,
    }


def _new_gateway(_world: World, role: str) -> dict[str, Any]:
    name = f"mx-{role}-{uuid.uuid4().hex[:6]}"
    return {"name": name, "region": "ap-southeast", "endpoint": f"{name}.example.net:51820"}


def _login_owner(world: World, _role: str) -> dict[str, Any]:
    return {"email": world.owner.email, "password": PASSWORD}


def _download_link(world: World, _role: str) -> dict[str, str]:
    return {"t": world.owner_phone.download_token}


def _someone_else(_world: World, role: str) -> dict[str, Any]:
    return {"email": f"reset-{role}@example.com"}


def _bad_token(_world: World, _role: str) -> dict[str, Any]:
    return {"token": "not-a-token"}


def _bad_token_and_password(_world: World, _role: str) -> dict[str, Any]:
    return {"token": "not-a-token", "password": "a good new one"}


def _wrong_current(_world: World, _role: str) -> dict[str, Any]:
    return {"current_password": "not it", "new_password": "a good new one"}


MATRIX: list[Rule] = [
    # --- public and documentation --------------------------------------------------------------
    Rule("GET", "/api/health", PUBLIC, "public"),
    # Open unless KSWIFI_METRICS_TOKEN is set; aggregate numbers only (the leak check holds).
    Rule("GET", "/metrics", PUBLIC, "public"),
    Rule("GET", "/api/openapi.json", PUBLIC, "public"),
    Rule("GET", "/api/docs", PUBLIC, "public"),
    Rule("GET", "/docs/oauth2-redirect", PUBLIC, "public"),
    Rule("GET", "/api/plans", PUBLIC),
    Rule("GET", "/api/regions", PUBLIC),
    Rule("GET", "/api/regions/{code}/probe", (204,) * 5, params={"code": "eu-west"}),
    # --- accounts: the body's credential decides, not the caller ---------------------------
    Rule("POST", "/api/auth/register", (202,) * 5, json=_fresh_email),
    Rule("POST", "/api/auth/login", (200,) * 5, json=_login_owner, bearer_credential=True),
    Rule("POST", "/api/auth/refresh", (401, 401, 200, 200, 200), json=_own_refresh),
    Rule("GET", "/api/auth/me", EACH_THEIR_OWN),
    # Logging out someone else's refresh token answers 204 and revokes nothing (users tests).
    Rule(
        "POST",
        "/api/auth/logout",
        (401, 401, 204, 204, 204),
        json=lambda w, _r: {"refresh_token": w.owner.refresh_token},
    ),
    # E-mailed links: a made-up token opens nothing; requests answer alike for any address.
    Rule("POST", "/api/auth/password-reset", (202,) * 5, json=_someone_else),
    Rule("POST", "/api/auth/verify-email/resend", (202,) * 5, json=_someone_else),
    Rule("POST", "/api/auth/password-reset/confirm", (400,) * 5, json=_bad_token_and_password),
    Rule("POST", "/api/auth/verify-email", (400,) * 5, json=_bad_token),
    Rule("POST", "/api/auth/email/confirm", (400,) * 5, json=_bad_token),
    # Changes of one's own account need the current password (wrong here: nothing changes).
    Rule("POST", "/api/auth/password", (401, 401, 422, 422, 422), json=_wrong_current),
    Rule(
        "POST",
        "/api/auth/email",
        (401, 401, 422, 422, 422),
        json=lambda _w, _r: {"password": "not it", "new_email": "moved@example.com"},
    ),
    Rule(
        "POST",
        "/api/account/delete",
        (401, 401, 422, 422, 422),  # the wrong password: nothing is deleted
        json=lambda _w, _r: {"password": "not it"},
    ),
    Rule("GET", "/api/alerts", EACH_THEIR_OWN),
    Rule("PUT", "/api/alerts", EACH_THEIR_OWN, json=lambda _w, _r: {}),
    # --- plans, purchases, vouchers --------------------------------------------------------
    Rule("GET", "/api/admin/plans", OPERATOR, operator_route=True),
    Rule("POST", "/api/admin/plans", (401, 401, 403, 403, 201), json=_new_plan),
    Rule(
        "PATCH",
        "/api/admin/plans/{code}",
        OPERATOR,
        json=lambda _w, _r: {"name": "Basic Session"},
        params={"code": "basic"},
    ),
    Rule(
        "POST",
        "/api/purchases",
        (401, 401, 201, 201, 201),
        json=lambda _w, _r: {"plan_code": "basic", "payment_method": "dev"},
    ),
    Rule("GET", "/api/purchases", EACH_THEIR_OWN),
    Rule("GET", "/api/purchases/{purchase_id}", OWNER_ONLY),
    Rule("GET", "/api/purchases/{purchase_id}/receipt", OWNER_ONLY),
    Rule(
        "POST",
        "/api/purchases/stripe/webhook",
        (400,) * 5,  # only a body signed with the webhook secret is acted on
        json=lambda w, _r: {"id": "evt_x", "type": "checkout.session.completed"},
    ),
    Rule(
        "POST",
        "/api/admin/vouchers",
        (401, 401, 403, 403, 201),
        json=lambda _w, _r: {"plan_code": "basic", "count": 1},
    ),
    Rule("GET", "/api/admin/vouchers.csv", OPERATOR, operator_route=True),
    Rule(
        "POST",
        "/api/admin/purchases/{purchase_id}/refund",
        (401, 401, 403, 403, 404),  # no such purchase: the owner's is left alone
        params={"purchase_id": "0" * 32},
    ),
    # --- sessions and usage ----------------------------------------------------------------
    Rule("GET", "/api/sessions", EACH_THEIR_OWN),
    Rule("GET", "/api/sessions/{session_id}", OWNER_ONLY),
    Rule("GET", "/api/sessions/{session_id}/usage/stream", OWNER_ONLY),
    Rule("GET", "/api/sessions/{session_id}/usage/history", OWNER_ONLY),
    # --- Connect Profiles --------------------------------------------------------------------
    Rule(
        "POST",
        "/api/connect/generate-profile",
        OWNER_ONLY,
        json=lambda w, _r: {"session_id": w.owner_session, "device_name": "phone"},
    ),
    Rule("GET", "/api/connect/profiles", EACH_THEIR_OWN),
    Rule("GET", "/api/connect/profiles/events", EACH_THEIR_OWN),
    Rule("GET", "/api/connect/profiles/{connect_id}", OWNER_ONLY),
    Rule("GET", "/api/connect/profiles/{connect_id}/config", OWNER_ONLY),
    Rule("GET", "/api/connect/profiles/{connect_id}/mobileconfig", OWNER_ONLY),
    Rule(
        "PATCH",
        "/api/connect/profiles/{connect_id}",
        OWNER_ONLY,
        json=lambda _w, _r: {"device_name": "phone"},  # its own name: nothing changes
    ),
    Rule(
        "DELETE",
        "/api/connect/profiles/{connect_id}",
        (401, 401, 404, 204, 404),
        params={"connect_id": "tablet"},
    ),
    # --- operator: gateways, sessions, users, reports ----------------------------------------
    Rule("POST", "/api/admin/gateways", (401, 401, 403, 403, 201), json=_new_gateway),
    Rule("GET", "/api/admin/gateways", OPERATOR, operator_route=True),
    Rule("POST", "/api/admin/gateways/{gateway_id}/rotate-token", OPERATOR),
    Rule("POST", "/api/admin/gateways/{gateway_id}/disable", OPERATOR),
    Rule("POST", "/api/admin/gateways/{gateway_id}/enable", OPERATOR),
    Rule(
        "POST",
        "/api/admin/gateways/{gateway_id}/endpoint",
        OPERATOR,
        json=lambda _w, _r: {"endpoint": "gw-c.example.net:51820"},
    ),
    Rule("GET", "/api/admin/sessions", OPERATOR, operator_route=True),
    Rule(
        "POST",
        "/api/admin/sessions/{session_id}/revoke",
        OPERATOR,
        json=lambda _w, _r: {"reason": "matrix"},
        params={"session_id": "victim0"},
    ),
    Rule(
        "POST",
        "/api/admin/sessions/{session_id}/extend",
        OPERATOR,
        json=lambda _w, _r: {"days": 1},
        params={"session_id": "victim1"},
    ),
    Rule("GET", "/api/admin/users", OPERATOR, operator_route=True),
    Rule("POST", "/api/admin/users/{user_id}/disable", OPERATOR),
    Rule("POST", "/api/admin/users/{user_id}/enable", OPERATOR),
    Rule("GET", "/api/admin/regions", OPERATOR, operator_route=True),
    Rule(
        "POST",
        "/api/admin/regions",
        (401, 401, 403, 403, 201),
        json=lambda _w, r: {
            "code": f"mx-{r}-{uuid.uuid4().hex[:4]}",
            "name": "M",
            "continent": "EU",
        },
    ),
    Rule(
        "PATCH",
        "/api/admin/regions/{code}",
        OPERATOR,
        json=lambda _w, _r: {"name": "Asia Pacific"},
        params={"code": "ap-southeast"},
    ),
    Rule("GET", "/api/admin/reports/daily", OPERATOR, operator_route=True),
    Rule("GET", "/api/admin/audit", OPERATOR, operator_route=True),
    # --- gateway agents -------------------------------------------------------------------------
    Rule("GET", "/api/gateway/v1/desired-state", AGENT, "agent"),
    Rule("POST", "/api/gateway/v1/usage", AGENT, "agent", json=_usage),
    Rule("POST", "/api/gateway/v1/heartbeat", AGENT, "agent", json=_heartbeat),
    Rule(
        "POST",
        "/api/gateway/v1/leases",
        AGENT,
        "agent",
        json=lambda w, _r: {"session_ids": [w.owner_session]},
    ),
    # --- web pages ------------------------------------------------------------------------------
    Rule("GET", "/", PUBLIC, "web"),
    Rule("GET", "/signup", (200, 200, 303, 303, 303), "web"),
    Rule("POST", "/signup", (200,) * 5, "web", form=_fresh_email),  # never logs in
    Rule("GET", "/login", (200, 200, 303, 303, 303), "web"),
    Rule("POST", "/login", (303,) * 5, "web", form=_login_owner, bearer_credential=True),
    Rule("POST", "/logout", (303,) * 5, "web", form=lambda _w, _r: {}),
    Rule("POST", "/auth/refresh", (401, 401, 204, 204, 204), "web", form=lambda _w, _r: {}),
    Rule("GET", "/plans", PUBLIC, "web"),
    Rule("GET", "/checkout/{plan_code}", WEB_LOGGED_IN, "web"),
    Rule(
        "POST",
        "/checkout/{plan_code}",
        (303,) * 5,  # anyone else to the login page, users to their new session (checked below)
        "web",
        form=lambda _w, _r: {"payment_method": "dev"},
    ),
    Rule("GET", "/sessions", WEB_LOGGED_IN, "web"),
    Rule("GET", "/sessions/{session_id}", WEB_OWNER_ONLY, "web"),
    Rule("GET", "/sessions/{session_id}/setup", WEB_OWNER_ONLY, "web"),
    Rule(
        "POST",
        "/sessions/{session_id}/setup",
        WEB_OWNER_ONLY,
        "web",
        form=lambda _w, _r: {"device_name": "phone"},
    ),
    Rule("GET", "/devices", WEB_LOGGED_IN, "web"),
    Rule(
        "POST",
        "/devices/{device_id}/rename",
        (303, 303, 404, 303, 404),
        "web",
        form=lambda _w, _r: {"device_name": "phone"},
    ),
    Rule("POST", "/devices/{device_id}/code", WEB_OWNER_ONLY, "web", form=lambda _w, _r: {}),
    Rule(
        "POST",
        "/devices/{device_id}/remove",
        # The owner's tablet may already be gone (the API's DELETE rule): removed or missing.
        (303, 303, 404, frozenset({303, 404}), 404),
        "web",
        form=lambda _w, _r: {},
        params={"device_id": "tablet"},
    ),
    Rule("GET", "/offline", PUBLIC, "web"),
    Rule("GET", "/terms", PUBLIC, "web"),
    Rule("GET", "/privacy", PUBLIC, "web"),
    Rule("GET", "/refunds", PUBLIC, "web"),
    Rule("GET", "/password-reset", PUBLIC, "web"),
    Rule("POST", "/password-reset", PUBLIC, "web", form=_someone_else),
    Rule("GET", "/password-reset/{token}", PUBLIC, "web", params={"token": "not-a-token"}),
    Rule(
        "POST",
        "/password-reset/{token}",
        (400,) * 5,
        "web",
        form=lambda _w, _r: {"password": "a good new one"},
        params={"token": "not-a-token"},
    ),
    Rule("GET", "/verify-email/{token}", (400,) * 5, "web", params={"token": "not-a-token"}),
    Rule("GET", "/account", WEB_LOGGED_IN, "web"),
    Rule(
        "POST",
        "/account/password",
        (303, 303, 422, 422, 422),
        "web",
        form=lambda w, r: {k: str(v) for k, v in _wrong_current(w, r).items()},
    ),
    Rule(
        "POST",
        "/account/email",
        (303, 303, 422, 422, 422),
        "web",
        form=lambda _w, _r: {"password": "not it", "new_email": "moved@example.com"},
    ),
    Rule(
        "POST",
        "/account/alerts",
        (303,) * 5,
        "web",
        form=lambda _w, _r: {f"email:{kind}": "on" for kind in ALERT_KINDS},
    ),
    Rule(
        "POST",
        "/account/delete",
        (303, 303, 422, 422, 422),
        "web",
        form=lambda _w, _r: {"password": "not it", "confirm": "yes"},
    ),
    Rule(
        "POST",
        "/account/push",
        (303, 303, 422, 422, 422),  # not a known push service: refused, nothing kept
        "web",
        json=lambda _w, _r: {
            "endpoint": "https://10.0.0.5/push",
            "keys": {"p256dh": "B" * 87, "auth": "a" * 22},
        },
    ),
    Rule(
        "POST",
        "/account/push/remove",
        (303, 303, 204, 204, 204),
        "web",
        json=lambda _w, _r: {"endpoint": "https://fcm.googleapis.com/fcm/send/none"},
    ),
    Rule("GET", "/receipts", WEB_LOGGED_IN, "web"),
    Rule("GET", "/receipts/{purchase_id}", WEB_OWNER_ONLY, "web"),
    Rule("GET", "/admin", CONSOLE, "web", operator_route=True),
    Rule("POST", "/admin", CONSOLE_POST, "web", form=_new_gateway, operator_route=True),
    Rule(
        "POST", "/admin/gateways/{gateway_id}/{action}", CONSOLE_POST, "web", form=lambda _w, _r: {}
    ),
    Rule(
        "POST",
        "/admin/gateways/{gateway_id}/endpoint",
        CONSOLE_POST,
        "web",
        form=lambda _w, _r: {"endpoint": "gw-c.example.net:51820"},
    ),
    Rule("GET", "/admin/sessions", CONSOLE, "web", operator_route=True),
    Rule(
        "POST",
        "/admin/sessions/{session_id}/extend",
        CONSOLE_POST,
        "web",
        form=lambda _w, _r: {"days": "1"},
        params={"session_id": "victim1"},
    ),
    Rule(
        "POST",
        "/admin/sessions/{session_id}/revoke",
        CONSOLE_POST,
        "web",
        form=lambda _w, _r: {},
        params={"session_id": "victim1"},
    ),
    Rule(
        "POST",
        "/admin/sessions/{session_id}/refund",
        (303, 303, 404, 404, 404),  # no such session
        "web",
        form=lambda _w, _r: {"voucher": "void"},
        params={"session_id": "0" * 32},
    ),
    Rule("GET", "/admin/users", CONSOLE, "web", operator_route=True),
    Rule("POST", "/admin/users/{user_id}/{action}", CONSOLE_POST, "web", form=lambda _w, _r: {}),
    Rule("GET", "/admin/plans", CONSOLE, "web", operator_route=True),
    Rule(
        "POST",
        "/admin/plans",
        CONSOLE_POST,
        "web",
        form=lambda w, r: {k: str(v) for k, v in _new_plan(w, r).items()},
    ),
    Rule(
        "POST",
        "/admin/plans/{code}",
        CONSOLE_POST,
        "web",
        form=lambda _w, _r: {"name": "Basic Session"},
        params={"code": "basic"},
    ),
    Rule("GET", "/admin/vouchers", CONSOLE, "web", operator_route=True),
    Rule(
        "POST",
        "/admin/vouchers",
        CONSOLE_POST,
        "web",
        form=lambda _w, _r: {"plan_code": "basic", "count": "1"},
        operator_route=True,
    ),
    Rule("GET", "/admin/vouchers.csv", CONSOLE, "web", operator_route=True),
    Rule("GET", "/admin/reports", CONSOLE, "web", operator_route=True),
    Rule("GET", "/admin/audit", CONSOLE, "web", operator_route=True),
    Rule("GET", "/admin/mail", CONSOLE, "web", operator_route=True),
    Rule("GET", "/admin/webhooks", CONSOLE, "web", operator_route=True),
    Rule(
        "GET",
        "/admin/mail/{mail_id}",
        (303, 303, 404, 404, 404),  # no such message, even for the operator
        "web",
        params={"mail_id": "0" * 32},
    ),
    Rule("GET", "/manifest.webmanifest", PUBLIC, "web"),
    Rule("GET", "/sw.js", PUBLIC, "web"),
    Rule("GET", "/icons/icon.svg", PUBLIC, "web"),
    Rule("GET", "/icons/icon-maskable-512.png", PUBLIC, "web"),
    Rule("GET", "/icons/icon-{size}.png", PUBLIC, "web", params={"size": "192"}),
    Rule("GET", "/static", PUBLIC, "web", params={"": "/app.css"}),
]

# Downloads with the link's token instead of a login: the token is the credential.
LINK_RULES = [
    Rule(
        "GET",
        "/api/connect/profiles/{connect_id}/config",
        (200,) * 5,
        query=_download_link,
        bearer_credential=True,
    ),
    Rule(
        "GET",
        "/api/connect/profiles/{connect_id}/mobileconfig",
        (200,) * 5,
        query=_download_link,
        bearer_credential=True,
    ),
    # The owner's link does not open another device.
    Rule(
        "GET",
        "/api/connect/profiles/{connect_id}/config",
        (404,) * 5,
        query=_download_link,
        params={"connect_id": "other-device"},
    ),
    # The phone's setup page: the link is the credential, and it opens once.
    Rule("GET", "/setup/{token}", (200, 410, 410, 410, 410), "public", bearer_credential=True),
]


def served_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every route and mount the app serves (HEAD aside)."""
    found: set[tuple[str, str]] = set()
    contexts: Any = getattr(routing, "iter_route_contexts", None)
    entries = list(contexts(app.routes)) if contexts else list(app.routes)
    for entry in entries:
        path = getattr(entry, "path", None)
        assert isinstance(path, str), entry
        methods = getattr(entry, "methods", None) or {"GET"}  # a mount serves GETs
        for method in methods:
            if method != "HEAD":
                found.add((method, path))
    return found


def test_every_route_is_in_the_matrix(app: FastAPI) -> None:
    listed = {(rule.method, rule.path) for rule in MATRIX}
    served = served_routes(app)
    assert len(listed) == len(MATRIX), "a route is listed twice"
    listed |= {(rule.method, rule.path) for rule in LINK_RULES}
    assert served - listed == set(), "routes without an authorization rule: add them to MATRIX"
    assert listed - served == set(), "MATRIX lists routes the app no longer serves"


def _path(rule: Rule, world: World) -> str:
    values = {
        "session_id": world.owner_session,
        "purchase_id": world.owner_purchase,
        "connect_id": world.owner_phone.id,
        "device_id": world.owner_phone.id,
        "gateway_id": world.gw_c.id,
        "user_id": world.victim.id,
        "token": world.owner_phone.setup_token,
        "plan_code": "basic",
        "action": "disable",
    }
    aliases = {
        "tablet": world.owner_tablet.id,
        "other-device": world.other_device,
        "victim0": world.victim_sessions[0],
        "victim1": world.victim_sessions[1],
    }
    for name, value in (rule.params or {}).items():
        values[name] = aliases.get(value, value)
    if "" in values:  # a mount: the file under it
        return rule.path + values[""]
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], rule.path)


def _credentials(rule: Rule, world: World, role: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    users = {"other": world.other, "owner": world.owner, "admin": world.admin}
    if role == "gateway":
        headers.update(world.gw_b.headers)
    elif rule.kind == "agent" and role == "owner":
        headers.update(world.gw_a.headers)
    elif role in users and rule.kind != "web":
        headers.update(users[role].headers)
    if rule.kind == "web":
        actor = users.get(role)
        nonce = actor.csrf_nonce if actor else f"nonce-{role}"
        headers["Cookie"] = world.cookie(actor, nonce)
        headers["X-CSRF-Token"] = world.csrf(nonce)
    return headers


async def _call(
    clients: dict[str, httpx.AsyncClient], rule: Rule, world: World, role: str
) -> httpx.Response:
    headers = _credentials(rule, world, role)
    kwargs: dict[str, Any] = {"headers": headers}
    if rule.json is not None:
        kwargs["json"] = rule.json(world, role)
    if rule.form is not None:
        data = rule.form(world, role)
        data["csrf_token"] = headers["X-CSRF-Token"]
        kwargs["data"] = data
    if rule.query is not None:
        kwargs["params"] = rule.query(world, role)
    return await clients[role].request(
        rule.method, _path(rule, world), follow_redirects=False, **kwargs
    )


def _matches(expected: Expect, status: int) -> bool:
    return status in expected if isinstance(expected, frozenset) else status == expected


async def owner_markers(world: World) -> dict[str, str]:
    markers = world.owner_markers()
    async with world.ctx.db.transaction() as db:
        keys = await db.scalars(select(Device.public_key).where(Device.user_id == world.owner.id))
        for number, key in enumerate(keys):
            markers[f"owner device key {number}"] = key
    return markers


async def _run(rules: list[Rule], world: World, clients: dict[str, httpx.AsyncClient]) -> None:
    failures: list[str] = []
    for rule in rules:
        markers = await owner_markers(world)  # generating again rotates the owner's keys
        for role, expected in zip(ROLES, rule.expect, strict=True):
            response = await _call(clients, rule, world, role)
            where = f"{rule.method} {_path(rule, world)} as {role}"
            if not _matches(expected, response.status_code):
                failures.append(f"{where}: {response.status_code}, expected {expected}")
            if response.status_code >= 500:
                failures.append(f"{where}: server error {response.text[:200]}")
            sees_owner_data = role == "owner" or (role == "admin" and rule.operator_route)
            if not sees_owner_data and not rule.bearer_credential:
                body = response.text
                leaked = [name for name, value in markers.items() if value in body]
                if leaked:
                    failures.append(f"{where}: answer shows {', '.join(leaked)}")
            if rule.path == "/checkout/{plan_code}" and rule.method == "POST":
                location = response.headers.get("location", "")
                wanted = "/login" if role in ("anon", "gateway") else "/sessions/"
                if not location.startswith(wanted):
                    failures.append(f"{where}: redirected to {location!r}")
    assert not failures, "\n".join(failures)


async def test_matrix(world: World, role_clients: dict[str, httpx.AsyncClient]) -> None:
    await _run(MATRIX, world, role_clients)
    # Only gateway A's report was billed: gateway B's, for a session it does not carry, was not.
    async with world.ctx.db.transaction() as db:
        session = await db.scalar(select(DataSession).where(DataSession.id == world.owner_session))
        assert session is not None
        assert session.used_bytes == 1024
        # A's billed bytes started its clock; B's heartbeat with the owner's key recorded no
        # handshake.
        assert session.status == "connected" and session.expires_at is not None
        handshakes = await db.scalars(
            select(Device.last_handshake_at).where(Device.user_id == session.user_id)
        )
        assert set(handshakes) == {None}


async def test_download_links(world: World, role_clients: dict[str, httpx.AsyncClient]) -> None:
    await _run(LINK_RULES, world, role_clients)
