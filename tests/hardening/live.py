"""A real `kswifi serve` on 127.0.0.1 with a fresh SQLite database, and the people in it.

Used by the schema fuzzing (schemathesis sends real HTTP with `requests`) and the log scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from kswifi.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION

KSWIFI = str(Path(sys.executable).with_name("kswifi"))
PASSWORD = "live correct horse 42"
SECRET_KEY = "live-secret-key-" + "0123456789abcdef" * 2
WEBHOOK_SECRET = "whsec_live_" + "0f1e2d3c4b5a" * 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class LiveServer:
    """`kswifi serve` as a child process; its log (stdout and stderr) goes to `log_path`."""

    data_dir: Path
    pg_dsn: str = ""  # a PostgreSQL database (postgresql://…) instead of the SQLite file
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KSWIFI_")}
        env.update(
            {
                "KSWIFI_DATA_DIR": str(self.data_dir),
                "KSWIFI_DATABASE_URL": self.pg_dsn.replace(
                    "postgresql://", "postgresql+asyncpg://"
                ),
                "KSWIFI_SECRET_KEY": SECRET_KEY,
                "KSWIFI_PUBLIC_URL": self.url,
                "KSWIFI_DEV_PAYMENTS": "true",
                "KSWIFI_LONGPOLL_SECONDS": "0.2",
                "KSWIFI_SSE_MAX_SECONDS": "0.3",
                "KSWIFI_RUN_WORKER": "false",
                "KSWIFI_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "KSWIFI_LOG_JSON": "true",
                "KSWIFI_LOG_LEVEL": "debug",
            }
        )
        env.update(self.extra_env)
        return env

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run SQL on the server's database (`$1` placeholders), for set-up and inspection."""
        if not self.pg_dsn:
            with sqlite3.connect(self.data_dir / "kswifi.db") as db:
                return list(db.execute(re.sub(r"\$\d+", "?", sql), args))

        async def run() -> list[tuple[Any, ...]]:
            connection = await asyncpg.connect(self.pg_dsn)
            try:
                return [tuple(row) for row in await connection.fetch(sql, *args)]
            finally:
                await connection.close()

        return asyncio.run(run())

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [KSWIFI, *args], env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        with self.log_path.open("a") as log:
            log.write(done.stdout + done.stderr)
        assert done.returncode == 0, f"kswifi {args[:3]}: {done.stderr}{done.stdout}"
        return done.stdout

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [KSWIFI, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return
            assert time.monotonic() < deadline, "kswifi serve did not answer"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def client(self) -> httpx.Client:
        # Gateway-protocol requests carry the version as an agent's do.
        return httpx.Client(
            base_url=self.url, timeout=30, headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION)}
        )


@dataclass
class Person:
    id: str
    email: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.request.url}: {response.text}"
    return response.json() if response.content else None


def person(server: LiveServer, *, admin: bool = False, label: str = "user") -> Person:
    email = f"{label}-{os.urandom(4).hex()}@example.com"
    with server.client() as http:
        ok(http.post("/api/auth/register", json={"email": email, "password": PASSWORD}), 202)
        if admin:  # what `kswifi admin users create --admin` does, without a second process
            server.query("UPDATE users SET is_admin = true WHERE email = $1", email)
        tokens = ok(http.post("/api/auth/login", json={"email": email, "password": PASSWORD}))
        me = ok(
            http.get("/api/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
        )
    return Person(me["id"], email, tokens["access_token"], tokens["refresh_token"])
