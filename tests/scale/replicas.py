"""Real `kswifi serve` replicas on one PostgreSQL database, for the scale-out tests and benches.

Each replica is its own process listening on a Unix socket (no port to collide with), with its
own data directory and the same secret key, database and event bus URL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from kswifi.control.migrate import upgrade
from kswifi.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION

PG_DSN = os.environ.get("KSWIFI_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("KSWIFI_TEST_REDIS_URL", "redis://127.0.0.1:6379/5")
KSWIFI = [sys.executable, "-m", "kswifi.cli"]
SECRET = "scale-test-secret-key-0123456789abcdef"


async def _pg(sql: str) -> None:
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@dataclass(frozen=True)
class ScaleDatabase:
    name: str

    @property
    def url(self) -> str:
        """SQLAlchemy URL (asyncpg driver)."""
        base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        return f"{base}/{self.name}"

    @property
    def dsn(self) -> str:
        """libpq/asyncpg DSN (also a PostgreSQL event bus URL)."""
        return f"{PG_DSN.rsplit('/', 1)[0]}/{self.name}"


@contextmanager
def scale_database(prefix: str = "kswifi_scale") -> Iterator[ScaleDatabase]:
    """A fresh, migrated PostgreSQL database of our own, dropped afterwards."""
    database = ScaleDatabase(f"{prefix}_{uuid.uuid4().hex[:10]}")
    asyncio.run(_pg(f'CREATE DATABASE "{database.name}"'))
    try:
        upgrade(database.url)
        yield database
    finally:
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)'))


@dataclass
class Replica:
    name: str
    socket: Path
    process: subprocess.Popen[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def client(self, timeout: float = 30.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket)),
            base_url="http://kswifi",
            timeout=timeout,
            headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION)},
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def replica_env(database: ScaleDatabase, events_url: str, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KSWIFI_DATA_DIR": str(data_dir),
        "KSWIFI_DATABASE_URL": database.url,
        "KSWIFI_SECRET_KEY": SECRET,
        "KSWIFI_EVENTS_URL": events_url,
        "KSWIFI_PUBLIC_URL": "http://kswifi",
        "KSWIFI_DEV_PAYMENTS": "true",
        "KSWIFI_LOG_LEVEL": "warning",
    }


def start_replica(
    name: str, database: ScaleDatabase, events_url: str, workdir: Path, **extra_env: str
) -> Replica:
    data_dir = workdir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    socket = workdir / f"{name}.sock"
    log = workdir / f"{name}.log"
    env = replica_env(database, events_url, data_dir) | extra_env
    with log.open("w") as output:
        process = subprocess.Popen(
            [*KSWIFI, "serve", "--uds", str(socket), "--no-migrate"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return Replica(name, socket, process, log, env)


def wait_ready(replica: Replica, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    transport = httpx.HTTPTransport(uds=str(replica.socket))
    with httpx.Client(transport=transport, base_url="http://kswifi", timeout=2) as client:
        while True:
            if replica.process.poll() is not None:
                raise RuntimeError(f"{replica.name} exited:\n{replica.log.read_text()[-3000:]}")
            if replica.socket.exists():
                try:
                    if client.get("/api/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{replica.name} not ready:\n{replica.log.read_text()[-3000:]}")
            time.sleep(0.1)


def admin_command(env: dict[str, str], *args: str) -> str:
    """Run `kswifi admin ...` against the replicas' database; its stdout."""
    result = subprocess.run(
        [*KSWIFI, "admin", *args], env=env, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise RuntimeError(f"kswifi admin {' '.join(args)}: {result.stderr or result.stdout}")
    return result.stdout
