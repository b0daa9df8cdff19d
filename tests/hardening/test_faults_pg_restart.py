"""PostgreSQL itself restarted under load (`pg_ctlcluster … restart`, as root).

While usage batches and purchases with Idempotency-Keys stream into a real `kswifi serve`,
the database server is restarted once: for a few seconds it refuses every connection. The
clients retry as the agent and a careful app do. Afterwards every batch is billed once and
every key made one purchase and one session; no answer was a 500.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time

import asyncpg
import pytest

from tests.conftest import PG_DSN
from tests.hardening.live import LiveServer
from tests.hardening.test_faults_control_plane import MixedLoad, server

__all__ = ["server"]  # the fixture, shared with the other control-plane faults

LOAD_SECONDS_AROUND = 2.0


def _cluster() -> list[str]:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions:
        return []
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"]


def _restartable() -> str | None:
    if os.geteuid() != 0:
        return "restarting PostgreSQL needs root"
    if shutil.which("pg_ctlcluster") is None or not _cluster():
        return "no pg_ctlcluster-managed PostgreSQL on this machine"
    if not str(PG_DSN).startswith("postgresql://postgres@127.0.0.1"):
        return "the test database is not the local cluster"
    return None


async def _wait_until_up(deadline: float) -> None:
    while True:
        try:
            connection = await asyncpg.connect(PG_DSN, timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        await connection.close()
        return


@pytest.mark.postgres
@pytest.mark.root
@pytest.mark.parametrize("server", ["postgres"], indirect=True)
def test_postgres_restarted_under_load(server: LiveServer) -> None:
    reason = _restartable()
    if reason:
        pytest.skip(reason)
    load = MixedLoad(server, "restart-")
    load.start()
    restart_seconds = 0.0
    try:
        time.sleep(LOAD_SECONDS_AROUND)
        started = time.monotonic()
        restarted = subprocess.run(_cluster(), capture_output=True, text=True, timeout=120)
        assert restarted.returncode == 0, restarted.stderr
        asyncio.run(_wait_until_up(time.monotonic() + 60))
        restart_seconds = time.monotonic() - started
        time.sleep(LOAD_SECONDS_AROUND)
    finally:
        load.finish()
        asyncio.run(_wait_until_up(time.monotonic() + 60))
    billed = load.check()
    print(
        f"\n[reliability] pg restart: down and back in {restart_seconds:.1f} s,"
        f" {load.summary(billed)}"
    )
