"""Faults of the control plane as real processes: killed mid-ingest, database connections cut.

- `kswifi serve` is killed with SIGKILL while usage batches are in flight, several times, and
  restarted; the sender behaves like the agent (a batch without an answer is sent again, in
  order, until acknowledged). Afterwards the session holds exactly the bytes of every batch,
  and each sequence is stored once: none lost, none applied twice. SQLite (and PostgreSQL
  under `KSWIFI_SOAK=1`).
- On PostgreSQL, the app's database connections are terminated (`pg_terminate_backend`, the
  server itself keeps running: it is shared) every 150 ms while usage batches and purchases
  with Idempotency-Keys stream in; same outcome, one purchase and one session per key, and the
  service answers normally once the cutting stops.

`KSWIFI_SOAK=1` multiplies the number of kills and the cutting time.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from kswifi.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION
from tests.conftest import PG_DSN
from tests.hardening.live import LiveServer, ok, person

SOAK = os.environ.get("KSWIFI_SOAK") == "1"
KILLS = 12 if SOAK else 3
CUTTING_SECONDS = 30.0 if SOAK else 6.0
BATCHES_PER_BURST = 8


async def _pg(sql: str, dsn: str = PG_DSN) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    name = ""
    dsn = ""
    if request.param == "postgres":
        name = f"kswifi_h_{uuid.uuid4().hex[:10]}"
        asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
        dsn = PG_DSN.rsplit("/", 1)[0] + f"/{name}"
    live = LiveServer(tmp_path / "data", pg_dsn=dsn)
    live.start()
    try:
        yield live
    finally:
        live.stop()
        if name:
            asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class Metered:
    session_id: str
    gateway_token: str
    user_headers: dict[str, str]


def metered_session(server: LiveServer) -> Metered:
    """An operator, a gateway, and a user's session with a device on that gateway."""
    admin = person(server, admin=True, label="ops")
    user = person(server, label="meter")
    with server.client() as http:
        created = ok(
            http.post(
                "/api/admin/gateways",
                json={"name": "flt-a", "region": "eu-west", "endpoint": "flt-a.example:51820"},
                headers=admin.headers,
            ),
            201,
        )
        bought = ok(
            http.post(
                "/api/purchases",
                json={"plan_code": "ultra", "payment_method": "dev"},
                headers=user.headers,
            ),
            201,
        )
        ok(
            http.post(
                "/api/connect/generate-profile",
                json={"session_id": bought["session_id"], "region": "eu-west"},
                headers=user.headers,
            )
        )
    return Metered(bought["session_id"], created["token"], user.headers)


class Sender:
    """The agent's delivery rule: batches in sequence order, each sent until acknowledged."""

    def __init__(self, server: LiveServer, metered: Metered) -> None:
        self.server = server
        self.metered = metered
        self.next_sequence = 1
        self.truth = 0
        self.acked = 0
        self.failures: Counter[str] = Counter()
        self.unacked: list[dict[str, object]] = []

    def batch(self) -> dict[str, object]:
        rx, tx = random.randint(1, 40_000), random.randint(1, 400_000)
        report = {
            "sequence": self.next_sequence,
            "sent_at": "2026-01-01T00:00:00Z",
            "deltas": [{"session_id": self.metered.session_id, "rx_bytes": rx, "tx_bytes": tx}],
        }
        self.next_sequence += 1
        self.truth += rx + tx
        self.unacked.append(report)
        return report

    def flush(self, deadline: float, stop: threading.Event | None = None) -> None:
        headers = {
            "Authorization": f"Bearer {self.metered.gateway_token}",
            PROTOCOL_HEADER: str(PROTOCOL_VERSION),
        }
        with httpx.Client(base_url=self.server.url, timeout=5) as http:
            while self.unacked and time.monotonic() < deadline:
                if stop is not None and stop.is_set():
                    return
                try:
                    response = http.post(
                        "/api/gateway/v1/usage", json=self.unacked[0], headers=headers
                    )
                except httpx.HTTPError as exc:
                    self.failures[type(exc).__name__] += 1
                    time.sleep(0.05)
                    continue
                if response.status_code != 200:
                    self.failures[str(response.status_code)] += 1
                    time.sleep(0.05)
                    continue
                ack = response.json()
                assert ack["accepted"] or ack["duplicate"], ack
                self.unacked.pop(0)
                self.acked += 1

    def billed(self) -> int:
        with httpx.Client(base_url=self.server.url, timeout=30) as http:
            session = ok(
                http.get(
                    f"/api/sessions/{self.metered.session_id}", headers=self.metered.user_headers
                )
            )
        return int(session["used_bytes"])


# PostgreSQL restarts cost ~15 s each here: `make test` kills the SQLite server, `make soak` both.
@pytest.mark.parametrize(
    "server",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)] if SOAK else ["sqlite"],
    indirect=True,
)
def test_killed_mid_ingest_and_restarted_loses_and_doubles_nothing(server: LiveServer) -> None:
    metered = metered_session(server)
    sender = Sender(server, metered)
    rng = random.Random(7)
    for _ in range(KILLS):
        for _ in range(BATCHES_PER_BURST):
            sender.batch()
        stop = threading.Event()
        worker = threading.Thread(target=sender.flush, args=(time.monotonic() + 30, stop))
        worker.start()
        time.sleep(rng.uniform(0.0, 0.25))  # somewhere in the middle of the burst
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
        server.process = None
        stop.set()
        worker.join(30)
        server.start()
        sender.flush(time.monotonic() + 60)
        assert sender.unacked == []
    billed = sender.billed()
    sequences = server.query("SELECT sequence, total_bytes FROM usage_batches ORDER BY sequence")
    kind = "postgres" if server.pg_dsn else "sqlite"
    print(
        f"\n[reliability] ingest kill {kind}: {KILLS} kills, {sender.next_sequence - 1} batches,"
        f" {sum(sender.failures.values())} failed sends {dict(sender.failures)},"
        f" billed {billed} == sent {sender.truth}"
    )
    assert billed == sender.truth
    assert [row[0] for row in sequences] == list(range(1, sender.next_sequence))
    assert sum(int(row[1]) for row in sequences) == sender.truth


class MixedLoad:
    """Usage batches and purchases with Idempotency-Keys streaming in, retried like careful
    clients (same batch, same key) until answered; then the checks that nothing was lost or
    done twice."""

    def __init__(self, server: LiveServer, key_prefix: str) -> None:
        self.server = server
        self.sender = Sender(server, metered_session(server))
        self.user = person(server, label="buyer")
        self.key_prefix = key_prefix
        self.stop = threading.Event()
        self.purchase_statuses: Counter[int | str] = Counter()
        self.keys: list[str] = []
        self.threads = [
            threading.Thread(target=self._usage_load),
            threading.Thread(target=self._purchase_load),
        ]

    def _usage_load(self) -> None:
        while not self.stop.is_set():
            for _ in range(4):
                self.sender.batch()
            self.sender.flush(time.monotonic() + 60, self.stop)

    def _purchase_load(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=10) as http:
            while not self.stop.is_set():
                key = f"{self.key_prefix}{uuid.uuid4().hex[:12]}"
                self.keys.append(key)
                headers = {**self.user.headers, "Idempotency-Key": key}
                body = {"plan_code": "basic", "payment_method": "dev"}
                while True:  # a client retries with the same key until it has an answer
                    try:
                        response = http.post("/api/purchases", json=body, headers=headers)
                    except httpx.HTTPError as exc:
                        self.purchase_statuses[type(exc).__name__] += 1
                        time.sleep(0.05)
                        continue
                    self.purchase_statuses[response.status_code] += 1
                    if response.status_code in (200, 201):
                        break
                    time.sleep(0.05)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(90)

    def check(self) -> int:
        """Every batch billed once, one purchase and one session per key, no 500; the bill."""
        self.sender.flush(time.monotonic() + 60)
        assert self.sender.unacked == []
        # A last request answers normally: the pool recovered.
        with self.server.client() as http:
            ok(http.get("/api/sessions", headers=self.user.headers))
        billed = self.sender.billed()
        rows = self.server.query("SELECT sequence FROM usage_batches ORDER BY sequence")
        like = f"{self.key_prefix}%"
        purchases = self.server.query(
            "SELECT idempotency_key, count(*) FROM purchases"
            f" WHERE idempotency_key LIKE '{like}' GROUP BY idempotency_key"
        )
        sessions = self.server.query(
            "SELECT count(*) FROM data_sessions s JOIN purchases p ON p.id = s.purchase_id"
            f" WHERE p.idempotency_key LIKE '{like}'"
        )
        # A lost connection is "try again" (503 + Retry-After), never an internal error.
        assert "500" not in self.sender.failures and 500 not in self.purchase_statuses
        assert "unhandled_error" not in self.server.log_path.read_text()
        assert billed == self.sender.truth
        assert [row[0] for row in rows] == list(range(1, self.sender.next_sequence))
        assert len(purchases) == len(self.keys) and all(count == 1 for _, count in purchases)
        assert sessions[0][0] == len(self.keys)
        return billed

    def summary(self, billed: int) -> str:
        return (
            f"{self.sender.next_sequence - 1} batches ({dict(self.sender.failures)} failed"
            f" sends), {len(self.keys)} purchase keys (answers {dict(self.purchase_statuses)}),"
            f" billed {billed} == sent {self.sender.truth}"
        )


@pytest.mark.postgres
@pytest.mark.parametrize("server", ["postgres"], indirect=True)
def test_database_connections_cut_under_load(server: LiveServer) -> None:
    load = MixedLoad(server, "cut-")
    name = server.pg_dsn.rsplit("/", 1)[1]

    async def cutter() -> int:
        count = 0
        connection = await asyncpg.connect(PG_DSN)
        try:
            deadline = time.monotonic() + CUTTING_SECONDS
            while time.monotonic() < deadline:
                count += len(
                    await connection.fetch(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = $1 AND pid <> pg_backend_pid()",
                        name,
                    )
                )
                await asyncio.sleep(0.15)
        finally:
            await connection.close()
        return count

    load.start()
    try:
        cuts = asyncio.run(cutter())
    finally:
        load.finish()
    billed = load.check()
    print(
        f"\n[reliability] pg cut: {cuts} backends terminated in {CUTTING_SECONDS:.0f} s,"
        f" {load.summary(billed)}"
    )
    assert cuts > 0
