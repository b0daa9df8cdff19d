"""No secret in a log line or an error body, over a full flow against a real `kswifi serve`.

The server logs JSON at debug level to a file. The flow: an operator registers a gateway and
rotates its token and makes vouchers; a user signs up (one bad password first), logs in (one
wrong password first, by API and by the web form), redeems a voucher (one wrong code first),
generates a Connect Profile, downloads it, opens the setup link; the gateway fetches its desired
state, reports usage and heartbeats; the user refreshes, replays the old refresh token and logs
out; a forged Stripe webhook arrives. Then every password, password hash, access and refresh
token, gateway token, voucher code, setup and download token, client private key, preshared
key, gateway private key, the secret key and the webhook secret are searched for in the log and
in every error body the flow received.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kswifi.control.profiles.config_render import parse_config
from kswifi.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION
from tests.hardening.live import (
    PASSWORD,
    SECRET_KEY,
    WEBHOOK_SECRET,
    LiveServer,
    ok,
    person,
)


class Recorder:
    """Keeps every answer with status >= 400, to search their bodies afterwards."""

    def __init__(self) -> None:
        self.errors: list[httpx.Response] = []

    def __call__(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            response.read()
            self.errors.append(response)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path / "data")
    live.start()
    try:
        yield live
    finally:
        live.stop()


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page[:500]
    return found.group(1)


def test_no_secret_in_logs_or_error_bodies(server: LiveServer) -> None:
    secrets: dict[str, str] = {
        "secret key": SECRET_KEY,
        "webhook secret": WEBHOOK_SECRET,
        "password": PASSWORD,
    }
    recorder = Recorder()
    http = httpx.Client(
        base_url=server.url,
        timeout=30,
        event_hooks={"response": [recorder]},
        headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION)},  # as an agent's requests
    )

    # An operator: a gateway (token shown once, then rotated) and vouchers.
    admin = person(server, admin=True, label="ops")
    secrets |= {"admin access": admin.access_token, "admin refresh": admin.refresh_token}
    created = ok(
        http.post(
            "/api/admin/gateways",
            json={"name": "sec-a", "region": "eu-west", "endpoint": "sec-a.example.net:51820"},
            headers=admin.headers,
        ),
        201,
    )
    secrets["first gateway token"] = created["token"]
    gateway_id = created["gateway"]["id"]
    rotated = ok(http.post(f"/api/admin/gateways/{gateway_id}/rotate-token", headers=admin.headers))
    gateway_token = rotated["token"]
    secrets["gateway token"] = gateway_token
    gateway = {"Authorization": f"Bearer {gateway_token}"}
    vouchers = ok(
        http.post(
            "/api/admin/vouchers",
            json={"plan_code": "premium", "count": 2},
            headers=admin.headers,
        ),
        201,
    )["codes"]
    secrets |= {f"voucher {n}": code for n, code in enumerate(vouchers)}

    # A user: refused sign-up and logins first, then the real ones.
    email = "secret-keeper@example.com"
    short = "tiny42!"
    long_password = "L0ng-" + "x" * 300
    wrong = "wrong-password-0042"
    secrets |= {"short password": short, "long password": long_password, "wrong password": wrong}
    http.post("/api/auth/register", json={"email": email, "password": short})
    http.post("/api/auth/register", json={"email": email, "password": long_password})
    ok(http.post("/api/auth/register", json={"email": email, "password": PASSWORD}), 202)
    http.post("/api/auth/login", json={"email": email, "password": wrong})
    web = httpx.Client(base_url=server.url, timeout=30, event_hooks={"response": [recorder]})
    form = _csrf(web.get("/login").text)
    web.post("/login", data={"email": email, "password": wrong, "csrf_token": form})
    tokens = ok(http.post("/api/auth/login", json={"email": email, "password": PASSWORD}))
    secrets |= {"access": tokens["access_token"], "refresh": tokens["refresh_token"]}
    user = {"Authorization": f"Bearer {tokens['access_token']}"}

    # Buying: a wrong voucher code first (close to a real one), then a real one.
    near_miss = vouchers[1][:-2] + ("AB" if not vouchers[1].endswith("AB") else "CD")
    http.post(
        "/api/purchases",
        json={"payment_method": "voucher", "voucher_code": near_miss},
        headers=user,
    )
    bought = ok(
        http.post(
            "/api/purchases",
            json={"payment_method": "voucher", "voucher_code": vouchers[0]},
            headers=user,
        ),
        201,
    )

    # The Connect Profile: its links, its config, the setup page.
    profile = ok(
        http.post(
            "/api/connect/generate-profile",
            json={"session_id": bought["session_id"], "region": "eu-west"},
            headers=user,
        )
    )
    setup_token = profile["setup_url"].rsplit("/", 1)[1]
    download_token = profile["config_url"].split("?t=", 1)[1]
    secrets |= {"setup token": setup_token, "download token": download_token}
    config_text = http.get(profile["config_url"].removeprefix(server.url)).text
    config = parse_config(config_text)
    secrets |= {
        "client private key": str(config.private_key),
        "preshared key": str(config.preshared_key),
    }
    http.get(f"/api/connect/profiles/{profile['connect_id']}/config?t={download_token}x")
    assert http.get(f"/setup/{setup_token}").status_code == 200
    assert http.get(f"/setup/{setup_token}").status_code == 410  # a second use: refused

    # The gateway: desired state (its own private key, the peer's preshared key), usage.
    state = ok(http.get("/api/gateway/v1/desired-state", headers=gateway))
    secrets["gateway private key"] = state["interface"]["private_key"]
    for number, peer in enumerate(state["peers"]):
        secrets[f"peer {number} preshared key"] = peer["preshared_key"]
    report = {
        "sequence": 1,
        "sent_at": "2026-01-01T00:00:00Z",
        "deltas": [{"session_id": bought["session_id"], "rx_bytes": 10, "tx_bytes": 20}],
    }
    ok(http.post("/api/gateway/v1/usage", json=report, headers=gateway))
    http.post("/api/gateway/v1/usage", json=report, headers={"Authorization": "Bearer nope"})
    ok(
        http.post(
            "/api/gateway/v1/heartbeat",
            json={"agent_version": "t", "interface_mode": "userspace", "peer_count": 1},
            headers=gateway,
        )
    )

    # Tokens: rotate, replay the old one (revokes the family), log out; a forged webhook.
    fresh = ok(http.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}))
    secrets |= {"access 2": fresh["access_token"], "refresh 2": fresh["refresh_token"]}
    http.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    http.post("/api/auth/refresh", json={"refresh_token": fresh["refresh_token"]})
    http.post(
        "/api/auth/logout",
        json={"refresh_token": fresh["refresh_token"]},
        headers={"Authorization": f"Bearer {fresh['access_token']}"},
    )
    http.post(
        "/api/purchases/stripe/webhook",
        content=b'{"id": "evt_1", "type": "checkout.session.completed"}',
        headers={"Stripe-Signature": f"t=1,v1={WEBHOOK_SECRET}"},
    )
    http.get("/api/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}x"})
    http.close()
    web.close()

    with sqlite3.connect(server.data_dir / "kswifi.db") as db:
        for number, (password_hash,) in enumerate(db.execute("SELECT password_hash FROM users")):
            secrets[f"password hash {number}"] = password_hash
    server.stop()

    log = server.log_path.read_text()
    # The log did record the flow (so its silence about secrets means something).
    for event in ("user_logged_in", "purchase_created", "gateway_online", "refresh_token_reused"):
        assert event in log, event
    assert len(recorder.errors) >= 10
    print(
        f"\n[reliability] secrets: {len(secrets)} secrets searched in {len(log.splitlines())}"
        f" log lines and {len(recorder.errors)} error bodies"
    )
    found = [name for name, value in secrets.items() if value and value in log]
    assert found == [], f"secrets in the server log: {found}"
    for response in recorder.errors:
        body = response.text
        leaked = [name for name, value in secrets.items() if value and value in body]
        assert leaked == [], f"{response.request.method} {response.request.url.path}: {leaked}"
