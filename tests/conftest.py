"""Shared fixtures: a migrated database on SQLite and PostgreSQL, the app, an API client."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI

from kswifi.control.app import create_app
from kswifi.control.config import Settings
from kswifi.control.deps import AppContext
from kswifi.control.events import InProcessEventBus
from kswifi.control.migrate import upgrade
from kswifi.control.security import use_password_hasher
from kswifi.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION
from tests.mailsink import MailSink, mail_sink

# argon2id with the smallest parameters: the same code path, a fraction of the CPU. The
# production parameters are checked in tests/control/test_security.py.
use_password_hasher(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))

PG_DSN = os.environ.get("KSWIFI_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_HOST_URL = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
TEST_SECRET = "test-secret-key-0123456789abcdef"
DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


async def _pg_execute(sql: str) -> None:
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[PgDatabase]:
    """One migrated PostgreSQL database for the whole run; each test gets it back pristine."""
    name = f"kswifi_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_execute(f'CREATE DATABASE "{name}"'))
    try:
        upgrade(f"{PG_HOST_URL}/{name}")
        database = PgDatabase(name)
        asyncio.run(database.snapshot())
        yield database
    finally:
        asyncio.run(_pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class PgDatabase:
    """Resets a database to its just-migrated state: TRUNCATE everything, restore seed rows.

    Creating a database per test costs seconds on a durable server; a reset costs milliseconds.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.dsn = PG_DSN.rsplit("/", 1)[0] + f"/{name}"
        self.url = f"{PG_HOST_URL}/{name}"
        self.tables: list[str] = []
        self.seed: dict[str, list[asyncpg.Record]] = {}

    async def snapshot(self) -> None:
        connection = await asyncpg.connect(self.dsn)
        try:
            rows = await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'alembic_version'"
            )
            self.tables = sorted(row["tablename"] for row in rows)
            for table in self.tables:
                records = await connection.fetch(f'SELECT * FROM "{table}"')
                if records:
                    self.seed[table] = records
        finally:
            await connection.close()

    async def reset(self) -> None:
        connection = await asyncpg.connect(self.dsn)
        try:
            await connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                self.name,
            )
            quoted = ", ".join(f'"{table}"' for table in self.tables)
            async with connection.transaction():
                await connection.execute(f"TRUNCATE {quoted} RESTART IDENTITY CASCADE")
                for table, records in self.seed.items():
                    columns = list(records[0].keys())
                    await connection.copy_records_to_table(
                        table, records=[tuple(record) for record in records], columns=columns
                    )
        finally:
            await connection.close()


@pytest.fixture(params=DATABASES)
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    """A fresh, migrated database for one test: SQLite and PostgreSQL in turn."""
    if request.param == "sqlite":
        path = tmp_path / "kswifi.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    database: PgDatabase = request.getfixturevalue("pg_database")
    asyncio.run(database.reset())
    yield database.url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        secret_key=TEST_SECRET,  # type: ignore[arg-type]
        public_url="http://testserver",
        dev_payments=True,
        longpoll_seconds=2.0,
        address_cooldown_seconds=3600,
    )


@pytest.fixture
def smtp() -> Iterator[MailSink]:
    """A real SMTP server on loopback that keeps every message it receives."""
    with mail_sink() as sink:
        yield sink


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    # Domain tests run on the in-process bus on both databases; the PostgreSQL default
    # (LISTEN/NOTIFY on the database) is tested with real replicas in tests/scale.
    application = create_app(settings, events=InProcessEventBus())
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def ctx(app: FastAPI) -> AppContext:
    context: AppContext = app.state.ctx
    return context


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    # Requests to the gateway protocol carry the version as an agent's do.
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver",
        headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION)},
    ) as http:
        yield http


class ApiUser:
    """A registered, logged-in user and the headers that act as them."""

    def __init__(self, email: str, password: str, tokens: dict[str, Any]) -> None:
        self.email = email
        self.password = password
        self.tokens = tokens
        self.headers = {"Authorization": f"Bearer {tokens['access_token']}"}


async def register_and_login(
    client: httpx.AsyncClient, email: str | None = None, password: str = "correct horse 42"
) -> ApiUser:
    email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
    created = await client.post("/api/auth/register", json={"email": email, "password": password})
    assert created.status_code == 202, created.text
    login = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert login.status_code == 200, login.text
    return ApiUser(email, password, login.json())


@pytest.fixture
async def user(client: httpx.AsyncClient) -> ApiUser:
    return await register_and_login(client)
