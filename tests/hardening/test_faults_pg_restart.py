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
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import PG_DSN
from tests.hardening.live import LiveServer, ok, person
from tests.hardening.test_faults_control_plane import Sender, metered_session, server

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
def test_postgres_restarted_under_load(server: LiveServer, tmp_path: Path) -> None:
    reason = _restartable()
    if reason:
        pytest.skip(reason)
    metered = metered_session(server)
    sender = Sender(server, metered)
    user = person(server, label="buyer")
    stop = threading.Event()
    purchase_statuses: Counter[int | str] = Counter()
    keys: list[str] = []

    def usage_load() -> None:
        while not stop.is_set():
            for _ in range(4):
                sender.batch()
            sender.flush(time.monotonic() + 60, stop)

    def purchase_load() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            while not stop.is_set():
                key = f"restart-{uuid.uuid4().hex[:12]}"
                keys.append(key)
                headers = {**user.headers, "Idempotency-Key": key}
                body = {"plan_code": "basic", "payment_method": "dev"}
                while True:
                    try:
                        response = http.post("/api/purchases", json=body, headers=headers)
                    except httpx.HTTPError as exc:
                        purchase_statuses[type(exc).__name__] += 1
                        time.sleep(0.05)
                        continue
                    purchase_statuses[response.status_code] += 1
                    if response.status_code in (200, 201):
                        break
                    time.sleep(0.05)

    threads = [threading.Thread(target=usage_load), threading.Thread(target=purchase_load)]
    for thread in threads:
        thread.start()
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
        stop.set()
        for thread in threads:
            thread.join(90)
        asyncio.run(_wait_until_up(time.monotonic() + 60))
    sender.flush(time.monotonic() + 60)
    assert sender.unacked == []
    with server.client() as http:
        ok(http.get("/api/sessions", headers=user.headers))
    billed = sender.billed()
    rows = server.query("SELECT sequence FROM usage_batches ORDER BY sequence")
    purchases = server.query(
        "SELECT idempotency_key, count(*) FROM purchases WHERE idempotency_key LIKE 'restart-%'"
        " GROUP BY idempotency_key"
    )
    sessions = server.query(
        "SELECT count(*) FROM data_sessions s JOIN purchases p ON p.id = s.purchase_id"
        " WHERE p.idempotency_key LIKE 'restart-%'"
    )
    print(
        f"\n[reliability] pg restart: down and back in {restart_seconds:.1f} s,"
        f" {sender.next_sequence - 1} batches ({dict(sender.failures)} failed sends),"
        f" {len(keys)} purchase keys (answers {dict(purchase_statuses)}),"
        f" billed {billed} == sent {sender.truth}"
    )
    assert "500" not in sender.failures and 500 not in purchase_statuses
    assert "unhandled_error" not in server.log_path.read_text()
    assert billed == sender.truth
    assert [row[0] for row in rows] == list(range(1, sender.next_sequence))
    assert len(purchases) == len(keys) and all(count == 1 for _, count in purchases)
    assert sessions[0][0] == len(keys)
