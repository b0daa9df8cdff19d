"""Desired-state deltas (gateway protocol 3), measured at 1,000, 10,000 and 50,000 installed
profiles, and written to their section of BENCHMARKS.md (between `<!-- deltas-bench:start -->`
and `<!-- deltas-bench:end -->`).

- Agent: what one changed profile costs from the answer's bytes to the tracker's view (what
  the diff then works on): the whole state (parse, book, tracker compare) against a delta
  (parse, check and apply to the book, tracker fed the changed peer). Medians of `--runs`.
- Control plane: CPU per desired-state answer after one change (a device added, the revision
  bumped and its owner recorded, as the profile service does), in-process against PostgreSQL,
  at 1,000 and at 50,000 profiles: built from the changed people alone
  (`desired.desired_update`), against one made from every device (`desired_state`, what each
  answer cost before, and still every `answers.WHOLE_EVERY`).
- Placement at that size: profile generation p50 at 40/s offered (bench.control_profiles, two
  replicas) with the gateway already holding 50,000 profiles, against none in the same run.

    .venv/bin/python -m bench.desired_deltas [--runs 5] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import os
import platform
import secrets
import statistics
import time
import uuid
from datetime import UTC, datetime

import asyncpg

from bench import control_profiles
from bench.control_common import SECRET, BenchDatabase, bench_database, seed
from bench.sections_common import write_section
from kswifi.agent.desired import DesiredTracker
from kswifi.control.config import Settings
from kswifi.control.db import Database
from kswifi.control.gateways import answers
from kswifi.control.gateways import desired as gateway_desired
from kswifi.control.security import SecretBox
from kswifi.protocol import DesiredState, DesiredUpdate, GardenSpec, GatewayInterface, PeerSpec
from kswifi.protocol.deltas import PeerBook, make_delta

START = "<!-- deltas-bench:start -->"
END = "<!-- deltas-bench:end -->"
SIZES = (1_000, 10_000, 50_000)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _state(count: int, revision: int = 1) -> DesiredState:
    """`count` profiles, one in five drawing from a session, the rest in the garden."""
    psk = _key()
    peers = []
    for index in range(count):
        host = index + 2
        drawing = index % 5 == 0
        peers.append(
            PeerSpec(
                public_key=_key(),
                preshared_key=psk,
                allowed_ips=[f"100.64.{host // 256}.{host % 256}/32", f"fd00::{host:x}/128"],
                session_id=f"s{index}" if drawing else None,
                quota_bytes=10**9 if drawing else 0,
                speed_mbps=25 if drawing else 0,
            )
        )
    return DesiredState(
        revision=revision,
        interface=GatewayInterface(
            private_key=_key(), public_key=_key(), listen_port=51820,
            addresses=["100.64.0.1/10", "fd00::1/64"],
        ),
        peers=peers,
        garden=GardenSpec(allow=["203.0.113.80/32"], dns=["192.0.2.53"],
                          redirect_url="https://shop.example/plans"),
    )  # fmt: skip


def _changed(state: DesiredState) -> DesiredState:
    """The same state with one garden profile drawing from a new session, one revision on."""
    peers = list(state.peers)
    peers[1] = peers[1].model_copy(
        update={"session_id": "s-new", "quota_bytes": 10**9, "speed_mbps": 10}
    )
    return state.model_copy(update={"revision": state.revision + 1, "peers": peers})


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def agent_side(count: int, runs: int) -> dict[str, float]:
    before = _state(count)
    after = _changed(before)
    whole_bytes = DesiredUpdate(kind="full", tag="t2", state=after).model_dump_json()
    delta = make_delta({p.public_key: p for p in before.peers}, before.revision, after)
    delta_bytes = DesiredUpdate(kind="delta", tag="t2", delta=delta).model_dump_json()
    whole_times, delta_times = [], []
    for _ in range(runs):
        book = PeerBook.of(before, "t1")
        tracker = DesiredTracker()
        tracker.rebuild(book.state, NOW)
        gc.collect()  # each side starts from a clean heap (a collection is not its cost)
        started = time.perf_counter()
        whole = DesiredUpdate.model_validate_json(whole_bytes)
        assert whole.state is not None
        PeerBook.of(whole.state, whole.tag)
        scope = tracker.update(whole.state, NOW)
        whole_times.append(time.perf_counter() - started)
        assert scope is not None and "s-new" in scope.sessions

        del whole, scope  # freed here, not inside the next measurement
        tracker = DesiredTracker()
        tracker.rebuild(book.state, NOW)
        gc.collect()
        started = time.perf_counter()
        update = DesiredUpdate.model_validate_json(delta_bytes)
        assert update.delta is not None
        changes = book.apply(update.delta, update.tag)
        scope = tracker.update(book.state, NOW, None, changes)
        delta_times.append(time.perf_counter() - started)
        assert scope is not None and "s-new" in scope.sessions
    return {
        "whole_ms": _median_ms(whole_times),
        "delta_ms": _median_ms(delta_times),
        "whole_kb": len(whole_bytes) / 1024,
        "delta_kb": len(delta_bytes) / 1024,
    }


def control_side(count: int, runs: int) -> dict[str, float]:
    with bench_database() as database:
        return asyncio.run(_control_side(database, count, runs))


async def _control_side(database: BenchDatabase, count: int, runs: int) -> dict[str, float]:
    seeded = await seed(database, gateway_count=1, sessions_per_gateway=count, free_sessions=0)
    gateway_id = seeded.gateway_ids[0]
    box = SecretBox(SECRET)
    connection = await asyncpg.connect(database.dsn)
    try:  # the seed's placeholder keys: one real encrypted preshared key for all
        await connection.execute(
            "UPDATE devices SET preshared_key_encrypted = $1", box.encrypt(_key())
        )
    finally:
        await connection.close()
    settings = Settings(database_url=database.url, secret_key=SECRET)  # type: ignore[arg-type]
    db = Database(database.url)
    changes: list[float] = []
    whole: list[float] = []
    kinds: list[str] = []
    host = count + 2
    try:
        known: str | None = None
        for run in range(runs + 1):
            if run:
                host += 1
                await _add_device(database.dsn, gateway_id, host)
            started = time.process_time()
            async with db.transaction() as session:
                update = await gateway_desired.desired_update(
                    session, box, gateway_id, datetime.now(UTC), None, settings, known
                )
            update.model_dump_json()
            if run:  # the first answer is whole and warms the caches
                changes.append(time.process_time() - started)
                kinds.append(update.kind)
                assert update.delta is not None and len(update.delta.upsert) == 1
            known = update.tag
        for _ in range(runs):  # the same change, answered from every device
            host += 1
            await _add_device(database.dsn, gateway_id, host)
            started = time.process_time()
            async with db.transaction() as session:
                state = await gateway_desired.desired_state(
                    session, box, gateway_id, datetime.now(UTC), None, settings
                )
            answers.answer(gateway_id, state, None, datetime.now(UTC)).model_dump_json()
            whole.append(time.process_time() - started)
    finally:
        await db.dispose()
    assert set(kinds) == {"delta"}, kinds
    return {"cpu_ms": _median_ms(changes), "whole_cpu_ms": _median_ms(whole)}


async def _add_device(dsn: str, gateway_id: str, host: int) -> None:
    """A new person's first profile (in the garden), as the profile service records it."""
    connection = await asyncpg.connect(dsn)
    try:
        psk = await connection.fetchval("SELECT preshared_key_encrypted FROM devices LIMIT 1")
        now = datetime.now(UTC)
        user_id = uuid.uuid4().hex
        await connection.execute(
            "INSERT INTO users (id, email, password_hash, is_admin, is_disabled, created_at)"
            " VALUES ($1, $2, 'x', false, false, $3)",
            user_id,
            f"added-{user_id}@example.com",
            now,
        )
        await connection.execute(
            "INSERT INTO devices (id, session_id, user_id, gateway_id, device_name, status,"
            " public_key, preshared_key_encrypted, host_index, ipv4, ipv6, created_at,"
            " rotated_at) VALUES ($1, NULL, $2, $3, $4, 'active', $5, $6, $7, $8, $9, $10, $10)",
            uuid.uuid4().hex, user_id, gateway_id, f"added-{host}", _key(), psk, host,
            f"100.64.{host // 256}.{host % 256}", f"fd00::{host:x}", now,
        )  # fmt: skip
        revision = await connection.fetchval(
            "UPDATE gateways SET revision = revision + 1, next_host_index = $2 WHERE id = $1"
            " RETURNING revision",
            gateway_id,
            host + 1,
        )
        await connection.execute(
            "INSERT INTO desired_changes (gateway_id, revision, user_id, created_at)"
            " VALUES ($1, $2, $3, $4)",
            gateway_id,
            revision,
            user_id,
            now,
        )
    finally:
        await connection.close()


def render(
    agent: dict[int, dict[str, float]],
    control: dict[int, dict[str, float]],
    generation: dict[int, control_profiles.ProfileResult],
) -> str:
    lines = [
        START,
        "## Desired-state deltas (bench/desired_deltas.py)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node() or 'this machine'}"
        f" ({os.cpu_count()} CPUs, Python {platform.python_version()}).",
        "",
        "Agent: one profile of N becomes current (a garden peer gets a session); from the"
        " answer's bytes to the tracker's view. Whole = parse the whole state, book it, compare"
        " it peer by peer; delta = parse the delta, check and apply it to the book, feed the"
        " changed peer to the tracker. One in five profiles draws from a session.",
        "",
        "| profiles | whole state | delta | ratio | answer size whole / delta |",
        "| --- | --- | --- | --- | --- |",
    ]
    for count, m in agent.items():
        lines.append(
            f"| {count:,} | {m['whole_ms']:.1f} ms | {m['delta_ms']:.2f} ms |"
            f" {m['whole_ms'] / m['delta_ms']:.0f}× | {m['whole_kb']:,.0f} KB /"
            f" {m['delta_kb']:.1f} KB |"
        )
    lines += [
        "",
        "Control plane: CPU per answer after one change (a device added, its owner recorded"
        " with the revision), in-process against PostgreSQL, answered as a delta: built from"
        " the changed people alone, against the same answer made from every device (what"
        " each answer cost before; now one every `answers.WHOLE_EVERY`, 5 minutes).",
        "",
        "| profiles on the gateway | CPU per change | made from every device |",
        "| --- | --- | --- |",
    ]
    for count, m in control.items():
        lines.append(f"| {count:,} | {m['cpu_ms']:.1f} ms | {m['whole_cpu_ms']:.1f} ms |")
    small, large = min(control), max(control)
    ratio = control[large]["cpu_ms"] / control[small]["cpu_ms"]
    whole_ratio = control[large]["whole_cpu_ms"] / control[small]["whole_cpu_ms"]
    lines += [
        "",
        f"Ratio {large:,} / {small:,}: {ratio:.2f}× (the target is near 1; made from every"
        f" device it is {whole_ratio:.0f}×). The answer reads the devices of the people"
        " recorded with the revisions since the last one (`desired_changes`), of those whose"
        " session ran out since, of those a lease hold concerns and of those drawing from a"
        " session another gateway carries too.",
        "",
        "Profile generation while the gateway holds many profiles (placement reads each"
        " gateway's kept-up `installed_devices`, not a count over the devices):",
        "",
        "| profiles on the gateway | p50 at 40/s offered | p99 | target |",
        "| --- | --- | --- | --- |",
    ]
    for count, result in generation.items():
        lines.append(
            f"| {count:,} | {result.paced_p50_seconds * 1000:.1f} ms |"
            f" {result.paced_p99_seconds * 1000:.1f} ms | ≤ 50 ms p50 |"
        )
    lines += [
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=15.0, help="each generation run")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    agent = {}
    for count in SIZES:
        print(f"agent side, {count:,} profiles ...", flush=True)
        agent[count] = agent_side(count, args.runs)
        print(f"  {agent[count]}", flush=True)
    control: dict[int, dict[str, float]] = {}
    for count in (SIZES[0], SIZES[-1]):
        print(f"control plane, {count:,} profiles ...", flush=True)
        control[count] = control_side(count, args.runs)
        print(f"  {control[count]}", flush=True)
    generation = {}
    for installed in (0, 50_000):
        print(f"profile generation, {installed:,} profiles installed ...", flush=True)
        generation[installed] = control_profiles.run(seconds=args.seconds, installed=installed)
        print(f"  p50 {generation[installed].paced_p50_seconds * 1000:.1f} ms", flush=True)
    text = render(agent, control, generation)
    print(text)
    if not args.no_write:
        write_section(text, START, END)


if __name__ == "__main__":
    main()
