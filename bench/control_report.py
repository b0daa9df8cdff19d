"""Run the control-plane benchmarks several times and write their section of BENCHMARKS.md
(between `<!-- control-bench:start -->` and `<!-- control-bench:end -->`; the rest of the file,
such as the gateway section, is left alone).

    .venv/bin/python -m bench.control_report [--runs 3] [--seconds 20] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import control_profiles, control_usage
from bench.control_common import median
from bench.sections_common import write_section

START = "<!-- control-bench:start -->"
END = "<!-- control-bench:end -->"
BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def _postgres_version() -> str:
    try:
        out = subprocess.run(
            ["psql", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.split()
        return out[-1] if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _fmt(values: list[float], scale: float = 1.0, digits: int = 0) -> str:
    return ", ".join(f"{value * scale:,.{digits}f}" for value in values)


def section(
    usage: list[control_usage.UsageResult],
    profiles: list[control_profiles.ProfileResult],
    seconds: float,
) -> str:
    def med(values: list[float]) -> float:
        return median(values)

    ingest = [r.deltas_per_second for r in usage]
    ingest_base = [r.baseline_deltas_per_second for r in usage]
    ingest_batched = [r.batched_baseline_deltas_per_second for r in usage]
    alone = [r.single_client_p50_seconds for r in profiles]
    p99 = [r.p99_seconds for r in usage]
    p50 = [r.p50_seconds for r in usage]
    sat99 = [r.saturated_p99_seconds for r in usage]
    paced = [r.paced_deltas_per_second for r in usage]
    gen = [r.profiles_per_second for r in profiles]
    gen_p50 = [r.p50_seconds for r in profiles]
    gen_p99 = [r.p99_seconds for r in profiles]
    health = [r.health_per_second for r in profiles]
    qr_ms = [r.qr_seconds for r in profiles]
    paced_p50 = [r.paced_p50_seconds for r in profiles]
    paced_p99 = [r.paced_p99_seconds for r in profiles]
    paced_rate = [r.paced_per_second for r in profiles]
    offered = profiles[0].paced_rate if profiles else 0.0
    loads = [r.load for r in usage + profiles]
    streams = usage[0].streams if usage else 0

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    rows = [
        "| what | target | median | runs | baseline, same run (median) | ratio | |",
        "| --- | --- | ---: | --- | --- | ---: | --- |",
        f"| usage ingestion, session deltas/s into PostgreSQL | ≥ 20,000 | {med(ingest):,.0f} |"
        f" {_fmt(ingest)} | plain per-session UPDATEs (asyncpg): {med(ingest_base):,.0f}/s |"
        f" {med(ingest) / med(ingest_base):.4f} | {verdict(med(ingest) >= 20_000)} |",
        f"| the same deltas applied set-based per batch (what ingestion could do) | — |"
        f" {med(ingest_batched):,.0f} | {_fmt(ingest_batched)} | | | |",
        f"| usage update on the stream, p99, {streams} streams open (each session paced,"
        f" {med(paced):,.0f} deltas/s offered) | ≤ 1 s | {med(p99):.2f} s | {_fmt(p99, 1, 2)} |"
        f" p50 {med(p50):.2f} s | | {verdict(med(p99) <= 1.0)} |",
        f"| usage update on the stream, p99, ingest saturated | — | {med(sat99):.2f} s |"
        f" {_fmt(sat99, 1, 2)} | | | |",
        f"| profile generation p50 at {offered:.0f} profiles/s offered (open loop, QR included;"
        f" {med(paced_rate):.1f}/s answered) | ≤ 50 ms | {med(paced_p50) * 1000:.0f} ms |"
        f" {_fmt(paced_p50, 1000)} ms | PNG+SVG QR encoding alone: {med(qr_ms) * 1000:.1f} ms |"
        f" {med(paced_p50) / med(qr_ms):.1f}× | {verdict(med(paced_p50) <= 0.05)} |",
        f"| profile generation p99 at {offered:.0f} profiles/s offered | — |"
        f" {med(paced_p99) * 1000:.0f} ms | {_fmt(paced_p99, 1000)} ms | | | |",
        f"| profile generation p50 saturated ({profiles[0].concurrency} clients back to back)"
        f" | — | {med(gen_p50) * 1000:.0f} ms | {_fmt(gen_p50, 1000)} ms | | | |",
        f"| profile generation p50, one client alone (no queueing) | — |"
        f" {med(alone) * 1000:.0f} ms | {_fmt(alone, 1000)} ms | | | |",
        f"| profile generation p99 saturated | — | {med(gen_p99) * 1000:.0f} ms |"
        f" {_fmt(gen_p99, 1000)} ms | | | |",
        f"| profiles/s on 2 cores (2 replicas), saturated | ≥ 40 | {med(gen):.1f} |"
        f" {_fmt(gen, 1, 1)} |"
        f" `GET /api/health` at the same concurrency: {med(health):,.0f}/s |"
        f" {med(gen) / med(health):.3f} | {verdict(med(gen) >= 40)} |",
    ]
    return "\n".join(
        [
            START,
            "## Control plane (bench/control_usage.py, bench/control_profiles.py)",
            "",
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs"
            f" ({platform.machine()}, Python {platform.python_version()}, PostgreSQL"
            f" {_postgres_version()}, Redis on loopback); two `kswifi serve` replicas on Unix"
            f" sockets, each phase {seconds:.0f} s; medians of {len(usage)} runs, each on a fresh"
            f" database and fresh replicas. Load average at the end of the runs:"
            f" {_fmt(loads, 1, 1)} (the machine is shared with other test suites: absolute"
            " numbers are pessimistic, the ratios to the same-run baselines less so).",
            "",
            *rows,
            "",
            "What bounds them (profiled in-process, `cProfile` and a statement counter):",
            "",
            "- **Ingestion** is set-based per report: 5 statements whatever its size (the"
            " gateway found by its token; its row locked; the billable sessions found and the"
            " batch recorded once with the gateway's sequence, in one statement; the sessions"
            " locked in id order, updated and their minute rollups added, in one statement; the"
            " lease rows upserted with their bytes and returned with the other gateways' leases"
            " and devices for the top-up, in one statement). Id and byte lists go as one text"
            " each that PostgreSQL splits (an array costs asyncpg a check and an encoding per"
            " element). One broker message then carries the report's events as compact facts"
            " (session, status, bytes, expiry); a replica renders a `usage` event only for a"
            " session with a stream open there, straight into the stream's JSON text, and"
            " decodes nothing for the others. What bounds it is CPU on the 2 cores everything"
            " shares: a 250-delta report costs about 21 ms of CPU in all (per process, from"
            " /proc, on a quiet machine): ~11.4 ms in the replicas (HTTP, pydantic, SQLAlchemy"
            " and asyncpg, the events and the writes to the streams that show them), ~6.6 ms in"
            " PostgreSQL, ~2.9 ms in the benchmark's own simulated gateways and streams (raw"
            " keep-alive connections with pre-encoded deltas, uvloop) and ~0.1 ms in Redis:"
            " about 95 reports/s, 24,000 deltas/s if nothing else ran. Before these changes a"
            " report cost ~35 ms (replicas 20.8, benchmark client 6.5, PostgreSQL 7.5)."
            " PostgreSQL alone takes the same updates an order of magnitude faster (baseline"
            " columns).",
            "- **Stream latency** is the time to apply the batch that carried the delta (events"
            " go out after the batch commits) plus the fan-out; a stream writes all events"
            " already waiting in one chunk. Within capacity p99 stays well under 1 s; on a"
            " machine swamped by other suites (load 12) it rose past 2 s.",
            "- **Profile generation** is measured two ways: the latency at the target rate (40"
            " profiles/s offered open loop, each latency counted from when its request was due)"
            " and the most the two replicas answer (8 clients back to back). At saturation the"
            " p50 is the queue, not the service: 8 clients over N profiles/s wait about 8/N s"
            " each (Little's law). A new device is 5 statements (the session with its"
            " advisory lock; its devices; placement from one read of active regions, enabled"
            " gateways and live-device counts; address and revision bump in one `UPDATE …"
            " RETURNING` with the released-address `DELETE` as a CTE; device and setup link in"
            " one `INSERT`), with the gateway row locked only for the last two and the commit."
            " The QR code is encoded once by zxing-cpp (C++, best of 8 masks) and both PNG and"
            " SVG are drawn from its matrix (a few ms, was ~30 ms with segno). What remains is"
            " CPU: about 11 ms per profile in the two replicas (HTTP, FastAPI, SQLAlchemy, keys,"
            " Fernet, QR), ~2 ms in the benchmark client and ~4 ms in PostgreSQL, all on the"
            " same 2 cores; all 8 clients place devices on the one benchmark gateway, so"
            " generations queue on its row for the last two statements and the commit. The"
            " placement read counts live devices per gateway with a join over all devices"
            " (~13 ms at 20,000 devices): a kept-up count per gateway is the next step.",
            END,
        ]
    )


def write(text: str, path: Path = BENCHMARKS) -> None:
    write_section(text.rstrip("\n") + "\n", START, END, path)


def from_log(path: Path) -> tuple[list[Any], list[Any]]:
    """The results a previous `--no-write` run printed (one repr per line), to write them."""
    names = {
        "UsageResult": control_usage.UsageResult,
        "ProfileResult": control_profiles.ProfileResult,
    }
    usage: list[Any] = []
    profiles: list[Any] = []
    for line in path.read_text().splitlines():
        text = line.strip()
        if text.startswith(("UsageResult(", "ProfileResult(")):
            value = eval(text, {"__builtins__": {}}, names)  # our own repr  # noqa: S307
            (usage if isinstance(value, control_usage.UsageResult) else profiles).append(value)
    return usage, profiles


def main() -> None:
    parser = argparse.ArgumentParser(description="Control-plane benchmarks → BENCHMARKS.md")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--from-log", type=Path, help="write the results a previous run printed")
    args = parser.parse_args()
    if args.from_log is not None:
        usage_results, profile_results = from_log(args.from_log)
        write(section(usage_results, profile_results, args.seconds))
        print(f"wrote {BENCHMARKS}")
        return
    usage = []
    profiles = []
    for number in range(args.runs):
        print(f"run {number + 1}/{args.runs}: usage ingestion and fan-out", flush=True)
        usage.append(control_usage.run(seconds=args.seconds))
        print(f"  {usage[-1]}", flush=True)
        print(f"run {number + 1}/{args.runs}: profile generation", flush=True)
        profiles.append(control_profiles.run(seconds=args.seconds))
        print(f"  {profiles[-1]}", flush=True)
    text = section(usage, profiles, args.seconds)
    print(text)
    if not args.no_write:
        write(text)
        print(f"wrote {BENCHMARKS}")


if __name__ == "__main__":
    main()
