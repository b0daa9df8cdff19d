"""Browser tests: the app served by uvicorn on a free loopback port (fresh SQLite database),
driven by Playwright with Debian's Chromium (`/usr/bin/chromium`; never a downloaded browser)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from kswifi.control.app import create_app
from kswifi.control.config import Settings
from kswifi.control.db import Database
from kswifi.control.migrate import upgrade
from kswifi.control.users import service as users_service
from kswifi.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
PASSWORD = "correct horse 42"
T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser/" in str(item.fspath):
            item.add_marker(pytest.mark.browser)
            if not CHROMIUM.exists():
                item.add_marker(
                    pytest.mark.skip(
                        reason="Debian's chromium is not installed at /usr/bin/chromium"
                    )
                )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveServer:
    """The running app and ways to set things up behind the browser's back."""

    url: str
    settings: Settings
    api: httpx.Client
    _sequences: dict[str, int] = field(default_factory=dict)
    _tokens: list[str] = field(default_factory=list)

    def run(self, work: Callable[[Database], Awaitable[T]]) -> T:
        """Run `work` against the server's database (its own engine, its own loop)."""

        async def _main() -> T:
            database = Database(self.settings.resolved_database_url)
            try:
                return await work(database)
            finally:
                await database.dispose()

        # Playwright's sync API keeps an event loop running in this thread: use another one.
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, _main()).result()

    def make_admin(self) -> tuple[str, dict[str, str]]:
        email = f"ops-{uuid.uuid4().hex[:8]}@example.com"

        async def _create(database: Database) -> None:
            async with database.transaction() as db:
                await users_service.create_admin(db, email, PASSWORD)

        self.run(_create)
        login = self.api.post("/api/auth/login", json={"email": email, "password": PASSWORD})
        login.raise_for_status()
        return email, {"Authorization": f"Bearer {login.json()['access_token']}"}

    def vouchers(self, admin: dict[str, str], plan_code: str, count: int = 1) -> list[str]:
        made = self.api.post(
            "/api/admin/vouchers", json={"plan_code": plan_code, "count": count}, headers=admin
        )
        made.raise_for_status()
        codes: list[str] = made.json()["codes"]
        return codes

    def gateway(self, admin: dict[str, str], name: str, region: str = "eu-west") -> str:
        made = self.api.post(
            "/api/admin/gateways",
            json={"name": name, "region": region, "endpoint": "192.0.2.10:51820"},
            headers=admin,
        )
        made.raise_for_status()
        token: str = made.json()["token"]
        self._tokens.append(token)
        return token

    def carrier(self, session_id: str) -> str:
        """The token of the gateway the session's device was placed on (any region)."""
        for token in self._tokens:
            state = self.api.get(
                "/api/gateway/v1/desired-state", headers={"Authorization": f"Bearer {token}"}
            )
            state.raise_for_status()
            if any(peer["session_id"] == session_id for peer in state.json()["peers"]):
                return token
        raise AssertionError(f"no gateway carries session {session_id}")

    def report_usage(self, token: str, session_id: str, rx_bytes: int, tx_bytes: int = 0) -> None:
        """What the gateway agent does when bytes flow: one sequence-numbered usage batch."""
        self._sequences[token] = self._sequences.get(token, 0) + 1
        report = {
            "sequence": self._sequences[token],
            "sent_at": datetime.now(UTC).isoformat(),
            "deltas": [{"session_id": session_id, "rx_bytes": rx_bytes, "tx_bytes": tx_bytes}],
        }
        sent = self.api.post(
            "/api/gateway/v1/usage", json=report, headers={"Authorization": f"Bearer {token}"}
        )
        sent.raise_for_status()
        assert sent.json()["accepted"], sent.text

    def handshake(self, token: str, session_id: str) -> None:
        """The agent's heartbeat after the phone's first WireGuard handshake."""
        auth = {"Authorization": f"Bearer {token}"}
        state = self.api.get("/api/gateway/v1/desired-state", headers=auth)
        state.raise_for_status()
        keys = [p["public_key"] for p in state.json()["peers"] if p["session_id"] == session_id]
        assert keys, "the device is not in the gateway's desired state"
        beat = self.api.post(
            "/api/gateway/v1/heartbeat",
            json={
                "agent_version": "browser-test",
                "interface_mode": "userspace",
                "peer_count": len(state.json()["peers"]),
                "rx_bps": 18_400_000,
                "tx_bps": 2_300_000,
                "applied_revision": state.json()["revision"],
                "handshakes": {key: datetime.now(UTC).isoformat() for key in keys},
            },
            headers=auth,
        )
        beat.raise_for_status()


@contextmanager
def serve_live(
    tmp_path_factory: pytest.TempPathFactory, *, with_worker: bool = False, **overrides: Any
) -> Iterator[LiveServer]:
    """The app under uvicorn on a free loopback port with a fresh SQLite database;
    `overrides` change its settings (a mail server, say)."""
    data_dir = tmp_path_factory.mktemp("live")
    database_url = f"sqlite+aiosqlite:///{data_dir / 'kswifi.db'}"
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(upgrade, database_url).result()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        secret_key="browser-test-secret-0123456789",  # type: ignore[arg-type]
        public_url=url,
        dev_payments=True,
        sse_max_seconds=60,
        log_level="warning",
        **overrides,
    )
    app = create_app(settings, with_worker=with_worker)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="kswifi-live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live server did not start")
        time.sleep(0.05)
    try:
        with httpx.Client(
            base_url=url, timeout=30, headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION)}
        ) as api:
            yield LiveServer(url=url, settings=settings, api=api)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serve_live(tmp_path_factory) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
