"""Two real `kswifi serve` replicas on one PostgreSQL database, events through Redis pub/sub or
PostgreSQL LISTEN/NOTIFY: whatever one replica changes, the streams and long-polls held on the
other see within a second."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.scale.replicas import (
    REDIS_URL,
    Replica,
    ScaleDatabase,
    admin_command,
    scale_database,
    start_replica,
    wait_ready,
)
from tests.scale.test_metrics import sample

pytestmark = pytest.mark.postgres
PASSWORD = "correct horse battery 42"
DEADLINE_SECONDS = 1.0


@dataclass
class Cluster:
    a: Replica
    b: Replica
    gateway_token: str


@pytest.fixture(scope="module")
def database() -> Iterator[ScaleDatabase]:
    with scale_database() as created:
        yield created


@pytest.fixture(params=["redis", "postgres", "database-only"])
def cluster(
    request: pytest.FixtureRequest, database: ScaleDatabase, tmp_path: Path
) -> Iterator[Cluster]:
    # "database-only": no KSWIFI_EVENTS_URL at all, the default for PostgreSQL.
    events_url = {"redis": REDIS_URL, "postgres": database.dsn, "database-only": ""}[request.param]
    a = start_replica("a", database, events_url, tmp_path)
    b = start_replica("b", database, events_url, tmp_path)
    try:
        wait_ready(a)
        wait_ready(b)
        name = f"gw-{request.param}"
        out = admin_command(
            a.env, "gateways", "add", "--name", name, "--region", "eu-west",
            "--endpoint",
            f"203.0.113.{['redis', 'postgres', 'database-only'].index(request.param) + 1}:51820",
        )  # fmt: skip
        yield Cluster(a, b, out.strip().splitlines()[-1])
    finally:
        a.stop()
        b.stop()


async def _buyer(client: httpx.AsyncClient, tag: str) -> tuple[dict[str, str], str]:
    email = f"scale-{tag}-{time.monotonic_ns()}@example.com"
    created = await client.post("/api/auth/register", json={"email": email, "password": PASSWORD})
    assert created.status_code == 202, created.text
    login = await client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    bought = await client.post(
        "/api/purchases", json={"plan_code": "premium", "payment_method": "dev"}, headers=headers
    )
    assert bought.status_code in (200, 201), bought.text
    return headers, bought.json()["session_id"]


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    kind, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line == "" and data:
            yield kind, json.loads(data)
            kind, data = "message", ""


async def test_profile_on_a_wakes_a_long_poll_on_b_and_usage_on_a_reaches_a_stream_on_b(
    cluster: Cluster,
) -> None:
    gateway = {"Authorization": f"Bearer {cluster.gateway_token}"}
    async with cluster.a.client() as a, cluster.b.client() as b:
        headers, session_id = await _buyer(a, "one")

        # 1. A gateway long-polls replica B; a profile is generated on replica A.
        first = await b.get("/api/gateway/v1/desired-state", headers=gateway)
        assert first.status_code == 200, first.text
        revision = first.json()["revision"]
        assert first.json()["peers"] == []
        poll = asyncio.create_task(
            b.get(f"/api/gateway/v1/desired-state?since={revision}", headers=gateway)
        )
        await asyncio.sleep(0.5)  # the poll is waiting on B
        assert not poll.done()
        started = time.monotonic()
        generated = await a.post(
            "/api/connect/generate-profile",
            json={"session_id": session_id, "region": "eu-west", "device_name": "phone"},
            headers=headers,
        )
        assert generated.status_code == 200, generated.text
        woken = await asyncio.wait_for(poll, 5)
        poll_seconds = time.monotonic() - started
        state = woken.json()
        assert state["revision"] > revision
        assert [peer["session_id"] for peer in state["peers"]] == [session_id]
        assert poll_seconds < DEADLINE_SECONDS, f"long-poll on B woke after {poll_seconds:.3f}s"

        # 2. The phone's usage stream is held on replica B; the gateway reports to replica A.
        async with b.stream(
            "GET", f"/api/sessions/{session_id}/usage/stream", headers=headers
        ) as stream:
            assert stream.status_code == 200
            events = _events(stream)
            kind, snapshot = await asyncio.wait_for(anext(events), 5)
            assert (kind, snapshot["used_bytes"]) == ("usage", 0)
            metrics = (await b.get("/metrics")).text
            assert sample(metrics, "kswifi_usage_streams_open") == 1

            started = time.monotonic()
            report = {
                "sequence": 1,
                "sent_at": datetime.now(UTC).isoformat(),
                "deltas": [{"session_id": session_id, "rx_bytes": 1500, "tx_bytes": 500}],
            }
            ack = await a.post("/api/gateway/v1/usage", json=report, headers=gateway)
            assert ack.status_code == 200 and ack.json()["accepted"] is True, ack.text
            kind, update = await asyncio.wait_for(anext(events), 5)
            stream_seconds = time.monotonic() - started
        assert kind == "usage"
        assert update["used_bytes"] == 2000 and update["session_id"] == session_id
        assert stream_seconds < DEADLINE_SECONDS, f"stream on B updated after {stream_seconds:.3f}s"

        # Both replicas read the same database: the totals agree everywhere.
        for client in (a, b):
            session = (await client.get(f"/api/sessions/{session_id}", headers=headers)).json()
            assert session["used_bytes"] == 2000
