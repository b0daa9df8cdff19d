"""Usage ingestion into PostgreSQL with the SSE fan-out under load.

Simulated gateways post usage batches (each delta: one session, 600 + 400 bytes) to two
`kswifi serve` replicas sharing PostgreSQL and Redis, while 2,000 usage streams are held open
on those replicas. The load generator shares the machine's 2 CPUs with what it measures, so it
is kept cheap: raw keep-alive HTTP/1.1 connections with pre-encoded deltas for the gateways,
raw sockets for the streams (the count read from each `usage` event without decoding it), and
uvloop.

Phase 1 (throughput): every gateway posts batches back to back; session deltas applied per
second, and the update latency the streams see while the ingest path is saturated.
Phase 2 (fan-out within capacity): only the 2,000 streamed sessions get deltas, each once per
interval, at about half of phase 1's throughput; the time from posting the batch that carried
a session's delta to its `usage` event arriving on that session's stream (p50, p99).

Baseline in the same run: the same per-session UPDATEs sent straight to PostgreSQL with asyncpg
(`executemany`, 4 connections): no HTTP, no ORM, no events; what the database alone sustains.

    .venv/bin/python -m bench.control_usage [--seconds 20] [--gateways 8] [--batch 250]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import uvloop

from bench.control_common import (
    BenchDatabase,
    Seeded,
    Server,
    bench_database,
    load_average,
    percentile,
    raise_fd_limit,
    replicas,
    seed,
)
from kswifi.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION

DELTA_RX = 600
DELTA_TX = 400
DELTA_BYTES = DELTA_RX + DELTA_TX
_USAGE_TYPE = b'"type":"usage"'
_USED = re.compile(rb'"used_bytes":(\d+)')
_ACCEPTED = re.compile(rb'"accepted":\s*true')
_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


@dataclass
class UsageResult:
    deltas_per_second: float
    baseline_deltas_per_second: float
    batched_baseline_deltas_per_second: float
    p50_seconds: float
    p99_seconds: float
    saturated_p50_seconds: float
    saturated_p99_seconds: float
    paced_deltas_per_second: float
    streams: int
    events: int
    batches: int
    load: float


@dataclass
class Ledger:
    """When each session's k-th delta was posted, and each gateway's last sequence."""

    sent_at: dict[tuple[str, int], float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)


class Stream:
    """One usage stream over a raw socket (HTTP/1.0: no chunking), cheap enough for 2,000."""

    def __init__(self, socket: str, session_id: str, token: str) -> None:
        self.socket = socket
        self.session_id = session_id
        self.token = token
        self.ready = asyncio.Event()
        self.latencies: list[float] = []

    async def follow(self, ledger: Ledger, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_unix_connection(self.socket, limit=1 << 20)
        writer.write(
            (
                f"GET /api/sessions/{self.session_id}/usage/stream HTTP/1.0\r\n"
                f"Host: kswifi\r\nAuthorization: Bearer {self.token}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        try:
            while not stop.is_set():
                line = await reader.readline()
                if not line:
                    return
                if not line.startswith(b"data: "):
                    continue
                if not self.ready.is_set():
                    self.ready.set()  # the snapshot that opens every stream
                    continue
                # Only `usage` events carry the count; read it without decoding the whole event.
                used = _USED.search(line) if _USAGE_TYPE in line else None
                if used is not None:
                    sent = int(used.group(1)) // DELTA_BYTES
                    started = ledger.sent_at.get((self.session_id, sent))
                    if started is not None:
                        self.latencies.append(time.monotonic() - started)
        finally:
            writer.close()


class GatewayConnection:
    """One simulated gateway's keep-alive HTTP/1.1 connection over the replica's Unix socket.

    Reports are written as raw requests with pre-encoded deltas, so the load generator spends
    little of the machine's CPU (what is measured is the control plane's)."""

    def __init__(self, socket: str, token: str) -> None:
        self.socket = socket
        self.token = token
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_unix_connection(
                self.socket, limit=1 << 22
            )
        assert self._reader is not None
        self._writer.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: kswifi\r\nAuthorization: Bearer {self.token}\r\n"
                f"{PROTOCOL_HEADER}: {PROTOCOL_VERSION}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = _CONTENT_LENGTH.search(head)
        if length is None:
            raise RuntimeError(f"no Content-Length in the answer: {head[:200]!r}")
        return status, await self._reader.readexactly(int(length.group(1)))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()


async def _gateway_loop(
    connection: GatewayConnection,
    sessions: list[str],
    batch: int,
    ledger: Ledger,
    deadline: float,
    interval: float | None,
) -> tuple[int, int]:
    """Post batches round the gateway's sessions until the deadline (one every `interval`
    seconds, or back to back): (deltas applied, batches)."""
    token = connection.token
    # Each session's delta, encoded once (`json.dumps` of the same report, piece by piece).
    encoded = {
        sid: json.dumps({"session_id": sid, "rx_bytes": DELTA_RX, "tx_bytes": DELTA_TX})
        for sid in sessions
    }
    applied = batches = position = 0
    size = min(batch, len(sessions))
    while time.monotonic() < deadline:
        chunk = [sessions[(position + i) % len(sessions)] for i in range(size)]
        position += size
        ledger.sequences[token] = ledger.sequences.get(token, 0) + 1
        body = (
            f'{{"sequence":{ledger.sequences[token]},'
            f'"sent_at":"{datetime.now(UTC).isoformat()}",'
            f'"deltas":[{",".join(encoded[sid] for sid in chunk)}]}}'
        ).encode()
        started = time.monotonic()
        for sid in chunk:
            ledger.counts[sid] = ledger.counts.get(sid, 0) + 1
            ledger.sent_at[(sid, ledger.counts[sid])] = started
        status, answer = await connection.post("/api/gateway/v1/usage", body)
        if status != 200:
            raise RuntimeError(f"usage report answered {status}: {answer[:300]!r}")
        batches += 1
        if _ACCEPTED.search(answer):
            applied += len(chunk)
        if interval is not None:
            await asyncio.sleep(max(0.0, started + interval - time.monotonic()))
    return applied, batches


async def _phase(
    servers: list[Server],
    plan: list[tuple[str, list[str]]],
    *,
    batch: int,
    ledger: Ledger,
    streams: list[Stream],
    seconds: float,
    interval: float | None,
) -> tuple[float, int, list[float]]:
    """One load phase: (deltas/s applied, batches, update latencies seen on the streams)."""
    for stream in streams:
        stream.latencies.clear()
    connections = [
        GatewayConnection(str(servers[index % len(servers)].socket), token)
        for index, (token, _) in enumerate(plan)
    ]
    started = time.monotonic()
    try:
        results = await asyncio.gather(
            *(
                _gateway_loop(connection, sessions, batch, ledger, started + seconds, interval)
                for connection, (_, sessions) in zip(connections, plan, strict=True)
            )
        )
    finally:
        for connection in connections:
            await connection.close()
    elapsed = time.monotonic() - started
    await asyncio.sleep(3.0)  # the phase's last events
    latencies = [value for stream in streams for value in stream.latencies]
    return sum(d for d, _ in results) / elapsed, sum(b for _, b in results), latencies


async def _baseline(database: BenchDatabase, sessions: list[str], seconds: float) -> float:
    """Deltas/s PostgreSQL takes as plain UPDATEs from 4 connections (no app in between)."""
    connections = [await asyncpg.connect(database.dsn) for _ in range(4)]
    deadline = time.monotonic() + seconds

    async def worker(connection: asyncpg.Connection, part: list[str]) -> int:
        count = 0
        while time.monotonic() < deadline:
            async with connection.transaction():
                await connection.executemany(
                    "UPDATE data_sessions SET used_bytes = used_bytes + $2,"
                    " rx_bytes = rx_bytes + $2, last_seen_at = now() WHERE id = $1",
                    [(sid, DELTA_BYTES) for sid in part],
                )
            count += len(part)
        return count

    started = time.monotonic()
    try:
        size = max(1, min(1000, len(sessions) // len(connections)))
        parts = [sessions[i * size : (i + 1) * size] for i in range(len(connections))]
        counts = await asyncio.gather(
            *(worker(c, p) for c, p in zip(connections, parts, strict=True))
        )
    finally:
        for connection in connections:
            await connection.close()
    return sum(counts) / (time.monotonic() - started)


async def _batched_baseline(
    database: BenchDatabase, sessions: list[str], batch: int, seconds: float
) -> float:
    """Deltas/s when each batch is applied set-based, as ingestion could be: one
    `UPDATE … FROM unnest(…)` for the sessions and one rollup upsert per batch, 4 connections."""
    connections = [await asyncpg.connect(database.dsn) for _ in range(4)]
    deadline = time.monotonic() + seconds

    async def worker(connection: asyncpg.Connection, part: list[str]) -> int:
        count = 0
        while time.monotonic() < deadline:
            async with connection.transaction():
                await connection.execute(
                    "UPDATE data_sessions AS s SET used_bytes = s.used_bytes + d.rx + d.tx,"
                    " rx_bytes = s.rx_bytes + d.rx, tx_bytes = s.tx_bytes + d.tx,"
                    " last_seen_at = now()"
                    " FROM unnest($1::varchar[], $2::bigint[], $3::bigint[]) AS d(id, rx, tx)"
                    " WHERE s.id = d.id",
                    part,
                    [DELTA_RX] * len(part),
                    [DELTA_TX] * len(part),
                )
                await connection.execute(
                    "INSERT INTO usage_rollups (session_id, bucket_start, rx_bytes, tx_bytes)"
                    " SELECT id, date_trunc('minute', now()), $2, $3 FROM unnest($1::varchar[])"
                    " AS d(id) ON CONFLICT (session_id, bucket_start) DO UPDATE SET"
                    " rx_bytes = usage_rollups.rx_bytes + excluded.rx_bytes,"
                    " tx_bytes = usage_rollups.tx_bytes + excluded.tx_bytes",
                    part,
                    DELTA_RX,
                    DELTA_TX,
                )
            count += len(part)
        return count

    started = time.monotonic()
    try:
        parts = [sessions[i * batch : (i + 1) * batch] for i in range(len(connections))]
        counts = await asyncio.gather(
            *(worker(c, p) for c, p in zip(connections, parts, strict=True) if p)
        )
    finally:
        for connection in connections:
            await connection.close()
    return sum(counts) / (time.monotonic() - started)


async def measure(
    database: BenchDatabase,
    servers: list[Server],
    seeded: Seeded,
    *,
    seconds: float,
    batch: int,
    streams: int,
) -> UsageResult:
    ledger = Ledger()
    stop = asyncio.Event()
    per_gateway = max(1, streams // len(seeded.gateway_ids))
    watched = [chunk[:per_gateway] for chunk in seeded.sessions_by_gateway]
    followed = [
        Stream(str(servers[i % len(servers)].socket), sid, seeded.access_token)
        for i, sid in enumerate(sid for chunk in watched for sid in chunk)
    ]
    tasks = []
    for number, stream in enumerate(followed):
        tasks.append(asyncio.create_task(stream.follow(ledger, stop)))
        if number % 100 == 99:
            await asyncio.sleep(0.05)  # not 2,000 connections in one burst
    await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in followed)), 180)

    try:
        everything = list(zip(seeded.gateway_tokens, seeded.sessions_by_gateway, strict=True))
        throughput, batches, saturated = await _phase(
            servers, everything, batch=batch, ledger=ledger, streams=followed,
            seconds=seconds, interval=None,
        )  # fmt: skip
        # Within capacity: each streamed session once per interval, about half of phase 1.
        interval = max(1.0, 2 * len(followed) / max(throughput, 1.0))
        streamed = list(zip(seeded.gateway_tokens, watched, strict=True))
        _rate, _batches, paced = await _phase(
            servers, streamed, batch=per_gateway, ledger=ledger, streams=followed,
            seconds=min(60.0, max(seconds, 2 * interval)), interval=interval,
        )  # fmt: skip
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    everyone = [sid for chunk in seeded.sessions_by_gateway for sid in chunk]
    baseline = await _baseline(database, everyone, 5.0)
    batched = await _batched_baseline(database, everyone, batch, 5.0)
    return UsageResult(
        deltas_per_second=throughput,
        baseline_deltas_per_second=baseline,
        batched_baseline_deltas_per_second=batched,
        p50_seconds=percentile(paced, 0.50),
        p99_seconds=percentile(paced, 0.99),
        saturated_p50_seconds=percentile(saturated, 0.50),
        saturated_p99_seconds=percentile(saturated, 0.99),
        paced_deltas_per_second=len(followed) / interval,
        streams=len(followed),
        events=len(paced),
        batches=batches,
        load=load_average(),
    )


def run(
    *, seconds: float = 20.0, gateways: int = 8, batch: int = 250, streams: int = 2000
) -> UsageResult:
    """One full run on a fresh database and two fresh replicas."""
    raise_fd_limit()
    with bench_database() as database:
        seeded = asyncio.run(
            seed(
                database,
                gateway_count=gateways,
                sessions_per_gateway=max(2 * batch, streams // gateways),
                free_sessions=0,
            )
        )
        # uvloop, as the replicas run: the 2,000 streams' reads cost the shared CPU less.
        with (
            replicas(database, 2) as servers,
            asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
        ):
            return runner.run(
                measure(database, servers, seeded, seconds=seconds, batch=batch, streams=streams)
            )


def main() -> None:
    parser = argparse.ArgumentParser(description="Usage ingestion and SSE fan-out benchmark")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--gateways", type=int, default=8)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--streams", type=int, default=2000)
    args = parser.parse_args()
    result = run(
        seconds=args.seconds, gateways=args.gateways, batch=args.batch, streams=args.streams
    )
    print(json.dumps(result.__dict__, indent=2))


if __name__ == "__main__":
    main()
