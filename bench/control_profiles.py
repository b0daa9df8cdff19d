"""Profile generation under load: `POST /api/connect/generate-profile` against two `kswifi serve`
replicas (one per core) on PostgreSQL, each call a new device of a fresh person placed by the
regions service, keys, addresses, desired-state revision, setup link and both QR codes (PNG and
SVG) included. Measured: latency p50/p99 at an offered rate (open loop: a request every
1/rate s whatever the answers, latency counted from when it was due, so a slow answer is not
hidden by a client that waits), then profiles per second and latency at saturation (a fixed
number of clients, each sending its next request as soon as it has an answer).

Baselines in the same run: `GET /api/health` at the same concurrency (the HTTP and event-loop
floor of these replicas), and the two QR encodings of a real config alone, in one process.

    .venv/bin/python -m bench.control_profiles [--seconds 20] [--concurrency 8] [--rate 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass

import httpx

from bench.control_common import (
    Seeded,
    Server,
    bench_database,
    load_average,
    median,
    percentile,
    raise_fd_limit,
    replicas,
    seed,
)
from kswifi.control.profiles import qr

SAMPLE_CONFIG = """[Interface]
PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=
Address = 100.64.0.2/32, fd4b:5357:4946::2/128
DNS = 1.1.1.1, 2606:4700:4700::1111
MTU = 1280

[Peer]
PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
PresharedKey = /UwcSPg38hW/D9Y3tcS1FOV0K1wuURMbS0sesJEP5ak=
Endpoint = gw1.eu-west.example.net:51820
AllowedIPs = 0.0.0.0/0, ::/0
PersistentKeepalive = 25
"""


@dataclass
class ProfileResult:
    profiles_per_second: float
    p50_seconds: float
    p90_seconds: float
    p99_seconds: float
    errors: int
    single_client_p50_seconds: float
    health_per_second: float
    qr_seconds: float
    concurrency: int
    load: float
    paced_rate: float = 0.0
    paced_per_second: float = 0.0
    paced_p50_seconds: float = 0.0
    paced_p99_seconds: float = 0.0
    paced_errors: int = 0


async def _generate_loop(
    client: httpx.AsyncClient,
    sessions: list[tuple[str, str]],
    deadline: float,
    latencies: list[float],
) -> int:
    errors = 0
    while sessions and time.monotonic() < deadline:
        session_id, token = sessions.pop()
        started = time.monotonic()
        response = await client.post(
            "/api/connect/generate-profile",
            json={"session_id": session_id},
            headers={"Authorization": f"Bearer {token}"},
        )
        if response.status_code == 200 and response.json()["profile_qr"].startswith("data:"):
            latencies.append(time.monotonic() - started)
        else:
            errors += 1
    return errors


async def _generate_one(
    client: httpx.AsyncClient, session: tuple[str, str], due: float, latencies: list[float]
) -> bool:
    session_id, token = session
    response = await client.post(
        "/api/connect/generate-profile",
        json={"session_id": session_id},
        headers={"Authorization": f"Bearer {token}"},
    )
    if response.status_code == 200 and response.json()["profile_qr"].startswith("data:"):
        latencies.append(time.monotonic() - due)
        return True
    return False


async def _paced(
    clients: list[httpx.AsyncClient],
    sessions: list[tuple[str, str]],
    *,
    rate: float,
    seconds: float,
    latencies: list[float],
) -> tuple[float, int]:
    """Requests due every 1/rate s, sent on time whether earlier ones were answered or not;
    (profiles answered per second, errors)."""
    started = time.monotonic()
    tasks = []
    for number in range(int(rate * seconds)):
        due = started + number / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if not sessions:
            break
        client = clients[number % len(clients)]
        tasks.append(asyncio.create_task(_generate_one(client, sessions.pop(), due, latencies)))
    answered = await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    return sum(answered) / elapsed, len(answered) - sum(answered)


async def _health_loop(client: httpx.AsyncClient, deadline: float) -> int:
    count = 0
    while time.monotonic() < deadline:
        (await client.get("/api/health")).raise_for_status()
        count += 1
    return count


def _qr_seconds(rounds: int = 30) -> float:
    """Median time of the PNG + SVG encodings of one config (what every response carries)."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        qr.png_data_uri_and_svg(SAMPLE_CONFIG)
        times.append(time.perf_counter() - started)
    return median(times)


async def measure(
    servers: list[Server], seeded: Seeded, *, seconds: float, concurrency: int, rate: float
) -> ProfileResult:
    clients = [
        httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(server.socket)),
            base_url="http://kswifi",
            timeout=60,
        )
        for server in servers
    ]
    try:
        # Warm-up: the first calls of each replica pay for imports and connections.
        warm = [seeded.free_sessions.pop() for _ in range(2 * len(clients))]
        await asyncio.gather(
            *(
                _generate_loop(clients[i % len(clients)], [one], 1e18, [])
                for i, one in enumerate(warm)
            )
        )
        paced: list[float] = []
        paced_per_second, paced_errors = await _paced(
            clients,
            seeded.free_sessions,
            rate=rate,
            seconds=seconds,
            latencies=paced,
        )
        latencies: list[float] = []
        started = time.monotonic()
        deadline = started + seconds
        errors = await asyncio.gather(
            *(
                _generate_loop(
                    clients[i % len(clients)],
                    seeded.free_sessions,
                    deadline,
                    latencies,
                )
                for i in range(concurrency)
            )
        )
        elapsed = time.monotonic() - started
        # One client alone: the service time without queueing behind the others.
        alone: list[float] = []
        await _generate_loop(clients[0], seeded.free_sessions, time.monotonic() + 5.0, alone)
        health_deadline = time.monotonic() + 5.0
        health = await asyncio.gather(
            *(_health_loop(clients[i % len(clients)], health_deadline) for i in range(concurrency))
        )
    finally:
        for client in clients:
            await client.aclose()
    return ProfileResult(
        profiles_per_second=len(latencies) / elapsed,
        p50_seconds=percentile(latencies, 0.50),
        p90_seconds=percentile(latencies, 0.90),
        p99_seconds=percentile(latencies, 0.99),
        errors=sum(errors),
        single_client_p50_seconds=percentile(alone, 0.50),
        health_per_second=sum(health) / 5.0,
        qr_seconds=_qr_seconds(),
        concurrency=concurrency,
        load=load_average(),
        paced_rate=rate,
        paced_per_second=paced_per_second,
        paced_p50_seconds=percentile(paced, 0.50),
        paced_p99_seconds=percentile(paced, 0.99),
        paced_errors=paced_errors,
    )


def run(
    *,
    seconds: float = 20.0,
    concurrency: int = 8,
    rate: float = 40.0,
    sessions: int = 5000,
    installed: int = 0,
) -> ProfileResult:
    """One full run on a fresh database and two fresh replicas; the gateway already holds
    `installed` profiles."""
    raise_fd_limit()
    with bench_database() as database:
        seeded = asyncio.run(
            seed(
                database,
                gateway_count=1,
                sessions_per_gateway=installed,
                free_sessions=sessions,
                capacity=installed + sessions + 10_000,
            )
        )
        with replicas(database, 2) as servers:
            return asyncio.run(
                measure(servers, seeded, seconds=seconds, concurrency=concurrency, rate=rate)
            )


def main() -> None:
    parser = argparse.ArgumentParser(description="Profile generation benchmark")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=40.0, help="offered profiles/s (open loop)")
    parser.add_argument(
        "--installed", type=int, default=0, help="profiles the gateway holds already"
    )
    args = parser.parse_args()
    result = run(
        seconds=args.seconds,
        concurrency=args.concurrency,
        rate=args.rate,
        installed=args.installed,
    )
    print(json.dumps(result.__dict__, indent=2))


if __name__ == "__main__":
    main()
