"""Shared pieces of the control-plane benchmarks: a database of our own, real `kswifi serve`
replicas on Unix sockets, bulk seeding straight into PostgreSQL, percentiles."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from kswifi.control.config import Settings
from kswifi.control.db import Database
from kswifi.control.gateways import service as gateways
from kswifi.control.migrate import upgrade
from kswifi.control.models import Plan
from kswifi.control.security import SecretBox

PG_DSN = os.environ.get("KSWIFI_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("KSWIFI_BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")
SECRET = "bench-secret-key-0123456789abcdef-0123456789"
KSWIFI = [sys.executable, "-m", "kswifi.cli"]


def raise_fd_limit() -> None:
    """Thousands of open streams need more than the default 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def load_average() -> float:
    return os.getloadavg()[0]


async def _pg(sql: str) -> None:
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@dataclass(frozen=True)
class BenchDatabase:
    name: str

    @property
    def dsn(self) -> str:
        return f"{PG_DSN.rsplit('/', 1)[0]}/{self.name}"

    @property
    def url(self) -> str:
        return self.dsn.replace("postgresql://", "postgresql+asyncpg://")


@contextmanager
def bench_database() -> Iterator[BenchDatabase]:
    database = BenchDatabase(f"kswifi_bench_{uuid.uuid4().hex[:10]}")
    asyncio.run(_pg(f'CREATE DATABASE "{database.name}"'))
    try:
        upgrade(database.url)
        yield database
    finally:
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)'))


@dataclass
class Server:
    socket: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def replicas(
    database: BenchDatabase, count: int, events_url: str = REDIS_URL
) -> Iterator[list[Server]]:
    """`count` replicas of `kswifi serve` on Unix sockets, ready when yielded."""
    workdir = Path(tempfile.mkdtemp(prefix="kswifi-bench-"))
    servers: list[Server] = []
    env = {
        **os.environ,
        "KSWIFI_DATABASE_URL": database.url,
        "KSWIFI_SECRET_KEY": SECRET,
        "KSWIFI_EVENTS_URL": events_url,
        "KSWIFI_LOG_LEVEL": "error",
        "KSWIFI_SSE_MAX_SECONDS": "3600",
    }
    try:
        for index in range(count):
            socket = workdir / f"r{index}.sock"
            data_dir = workdir / f"r{index}"
            data_dir.mkdir()
            process = subprocess.Popen(
                [*KSWIFI, "serve", "--uds", str(socket), "--no-migrate"],
                env={**env, "KSWIFI_DATA_DIR": str(data_dir)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            servers.append(Server(socket, process))
        for server in servers:
            _wait_ready(server)
        yield servers
    finally:
        for server in servers:
            server.stop()


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + 60
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(server.socket)), base_url="http://kswifi"
    ) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError("replica exited during start")
            try:
                if server.socket.exists() and client.get("/api/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise TimeoutError("replica not ready")


@dataclass
class Seeded:
    user_id: str
    access_token: str
    gateway_ids: list[str]
    gateway_tokens: list[str]
    sessions_by_gateway: list[list[str]]  # sessions with a device on each gateway
    # Sessions without a device (for profile generation), each of its own person (a person
    # installs few devices): (session id, that person's access token).
    free_sessions: list[tuple[str, str]]


async def seed(
    database: BenchDatabase,
    *,
    gateway_count: int,
    sessions_per_gateway: int,
    free_sessions: int,
    capacity: int = 60_000,
) -> Seeded:
    """Gateways through the real service; users, sessions and devices by COPY (fast)."""
    settings = Settings(database_url=database.url, secret_key=SECRET)  # type: ignore[arg-type]
    secrets = SecretBox(SECRET)
    db = Database(database.url)
    gateway_ids: list[str] = []
    tokens: list[str] = []
    try:
        async with db.transaction() as session:
            for index in range(gateway_count):
                gateway, token = await gateways.register(
                    session,
                    secrets,
                    settings,
                    name=f"bench-{index}",
                    region_code="eu-west",
                    endpoint=f"203.0.113.{index + 1}:51820",
                    capacity=capacity,
                )
                gateway_ids.append(gateway.id)
                tokens.append(token)
            plan = await session.get(Plan, "planpremium".ljust(32, "0"))
            assert plan is not None
            plan_id = plan.id
    finally:
        await db.dispose()

    now = datetime.now(UTC)
    user_id = uuid.uuid4().hex
    connection = await asyncpg.connect(database.dsn)
    try:
        await connection.execute(
            "INSERT INTO users (id, email, password_hash, is_admin, is_disabled, created_at)"
            " VALUES ($1, $2, 'x', false, false, $3)",
            user_id,
            f"bench-{user_id[:8]}@example.com",
            now,
        )
        total = gateway_count * sessions_per_gateway + free_sessions
        session_ids = [uuid.uuid4().hex for _ in range(total)]
        purchase_ids = [uuid.uuid4().hex for _ in range(total)]
        free_users = [uuid.uuid4().hex for _ in range(free_sessions)]
        await connection.copy_records_to_table(
            "users",
            records=[
                (uid, f"bench-{uid}@example.com", "x", False, False, now) for uid in free_users
            ],
            columns=["id", "email", "password_hash", "is_admin", "is_disabled", "created_at"],
        )
        owners = [user_id] * (total - free_sessions) + free_users
        await connection.copy_records_to_table(
            "purchases",
            records=[
                (pid, owner, plan_id, "dev", "paid", 0, "USD", now, now)
                for pid, owner in zip(purchase_ids, owners, strict=True)
            ],
            columns=[
                "id", "user_id", "plan_id", "provider", "status", "amount_cents", "currency",
                "created_at", "paid_at",
            ],
        )  # fmt: skip
        huge = 1 << 50  # never exhausted during a bench
        await connection.copy_records_to_table(
            "data_sessions",
            records=[
                (
                    sid, owner, plan_id, pid, "premium", "Premium Session", "active", huge,
                    25, 30 * 86400, 3, 0, 0, 0, now, now + timedelta(days=30), now,
                    now + timedelta(days=30), 0,
                )
                for sid, pid, owner in zip(session_ids, purchase_ids, owners, strict=True)
            ],
            columns=[
                "id", "user_id", "plan_id", "purchase_id", "plan_code", "plan_name", "status",
                "data_limit_bytes", "speed_mbps", "validity_seconds", "max_devices", "used_bytes",
                "rx_bytes", "tx_bytes", "created_at", "activation_deadline", "activated_at",
                "expires_at", "warned_percent",
            ],
        )  # fmt: skip
        by_gateway: list[list[str]] = []
        devices = []
        for index, gateway_id in enumerate(gateway_ids):
            chunk = session_ids[index * sessions_per_gateway : (index + 1) * sessions_per_gateway]
            by_gateway.append(chunk)
            for host, sid in enumerate(chunk, start=2):
                key = uuid.uuid4().hex + uuid.uuid4().hex[:11] + "="
                devices.append(
                    (
                        uuid.uuid4().hex, sid, user_id, gateway_id, "phone", "active", key, "x",
                        host, f"100.64.{host // 256}.{host % 256}", f"fd00::{host:x}", now, now,
                    )
                )  # fmt: skip
        await connection.copy_records_to_table(
            "devices",
            records=devices,
            columns=[
                "id", "session_id", "user_id", "gateway_id", "device_name", "status",
                "public_key", "preshared_key_encrypted", "host_index", "ipv4", "ipv6",
                "created_at", "rotated_at",
            ],
        )  # fmt: skip
        await connection.execute(
            "UPDATE gateways SET next_host_index = $1, installed_devices = $2",
            sessions_per_gateway + 2,
            sessions_per_gateway,
        )
        await connection.execute("ANALYZE")
    finally:
        await connection.close()
    token = secrets.issue_access_token(user_id, False, timedelta(hours=2))
    return Seeded(
        user_id=user_id,
        access_token=token,
        gateway_ids=gateway_ids,
        gateway_tokens=tokens,
        sessions_by_gateway=by_gateway,
        free_sessions=[
            (sid, secrets.issue_access_token(owner, False, timedelta(hours=2)))
            for sid, owner in zip(
                session_ids[gateway_count * sessions_per_gateway :], free_users, strict=True
            )
        ],
    )
