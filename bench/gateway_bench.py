"""Gateway data-plane benchmark: 10,000 sessions on one wireguard-go gateway (needs root).

Measures, in a throw-away network namespace: a full reconcile from empty, one peer added to
a gateway holding N, one usage read of N sessions, and the read of the whole data plane that
precedes each reconcile. Writes a section of BENCHMARKS.md.

    python -m bench.gateway_bench [--peers 10000] [--no-write]
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

from kswifi.agent.dataplane import KernelDataplane
from kswifi.agent.drivers.command import CommandRunner
from kswifi.agent.drivers.nftables import NftConfig, NftTable
from kswifi.agent.drivers.tc import TcShaper
from kswifi.agent.drivers.wireguard import WireguardInterface
from kswifi.agent.keys import generate_private_key, public_key_of
from kswifi.agent.reconcile import desired_from_state, diff
from kswifi.protocol import DesiredState, GatewayInterface, PeerSpec

T = TypeVar("T")
SECTION = "## Gateway data plane (bench/gateway_bench.py)"
BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def timed(function: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def random_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def peers(count: int, offset: int = 0) -> list[PeerSpec]:
    base4 = int(ipaddress.ip_address("100.64.0.0"))
    result = []
    for index in range(offset, offset + count):
        host = index + 2
        result.append(
            PeerSpec(
                public_key=random_key(),
                preshared_key=random_key(),
                allowed_ips=[
                    f"{ipaddress.ip_address(base4 + host)}/32",
                    f"fd4b:5357:4946::{host:x}/128",
                ],
                session_id=f"s{index:06d}",
                quota_bytes=5 * 1024**3,
                speed_mbps=(10, 25, 50)[index % 3],
            )
        )
    return result


def run(count: int) -> list[tuple[str, float, str]]:
    prefix = "kb" + secrets.token_hex(2)
    ns, wg, ifb, wan = f"{prefix}-gw", f"{prefix}wg", f"{prefix}ifb", f"{prefix}wan"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "ip",
                "link",
                "add",
                wan,
                "type",
                "veth",
                "peer",
                "x" + wan,
            ],
            check=True,
        )
        runner = CommandRunner(netns=ns, timeout_s=300)
        dataplane = KernelDataplane(
            runner=runner,
            wireguard=WireguardInterface(runner, wg, userspace_only=True),
            nft=NftTable(runner, NftConfig(wg, wan)),
            tc=TcShaper(runner, wg, ifb),
        )
        dataplane.prepare()
        private = generate_private_key()
        interface = GatewayInterface(
            private_key=private,
            public_key=public_key_of(private),
            listen_port=51820,
            addresses=["100.64.0.1/10", "fd4b:5357:4946::1/64"],
        )
        specs = peers(count)
        state = DesiredState(revision=1, interface=interface, peers=specs)
        now = datetime.now(UTC)
        results: list[tuple[str, float, str]] = []

        observation, seconds = timed(dataplane.observe)
        actions = diff(desired_from_state(state, now), observation.actual({}))
        _, apply_s = timed(lambda: dataplane.apply(actions, observation))
        results.append(
            (
                f"full reconcile from empty, {count} sessions (read+diff+apply)",
                seconds + apply_s,
                f"{len(actions)} actions",
            )
        )

        observation, read_s = timed(dataplane.observe)
        results.append(
            (
                f"read of the whole data plane at {count}",
                read_s,
                "wg UAPI + nft -j list table + tc show",
            )
        )
        _, wg_s = timed(dataplane.wireguard.read)
        _, nft_s = timed(dataplane.nft.read)
        _, tc_s = timed(dataplane.tc.read)
        results.append(("  of which WireGuard (UAPI get)", wg_s, ""))
        results.append(("  of which nftables (nft -j list table)", nft_s, ""))
        results.append(("  of which tc (class + filter show, 2 devices)", tc_s, ""))
        leftover = diff(desired_from_state(state, now), observation.actual({}))
        results.append(("no-op reconcile diff after apply", 0.0, f"{len(leftover)} actions"))

        usage_times = []
        for _ in range(5):
            reading, usage_s = timed(dataplane.read_usage)
            usage_times.append(usage_s)
        results.append(
            (
                f"one usage read of {count} sessions (nft -j, median of 5)",
                statistics.median(usage_times),
                f"{len(reading.counters)} counters",
            )
        )

        add_times = []
        full_add = []
        for extra in range(5):
            one = peers(1, offset=count + extra)
            state = DesiredState(revision=2 + extra, interface=interface, peers=specs + one)
            specs = specs + one
            observation, read_s = timed(dataplane.observe)
            actions = diff(desired_from_state(state, now), observation.actual({}))
            _, apply_s = timed(partial(dataplane.apply, actions, observation))
            add_times.append(apply_s)
            full_add.append(read_s + apply_s)
        results.append(
            (
                f"one peer added at {count}: apply (nft batch + UAPI + tc), median of 5",
                statistics.median(add_times),
                "7 actions",
            )
        )
        results.append(
            (
                f"one peer added at {count}: read + diff + apply, median of 5",
                statistics.median(full_add),
                "",
            )
        )
        return results
    finally:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        for pid in pids.stdout.split():
            subprocess.run(["kill", "-9", pid], check=False)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        Path(f"/var/run/wireguard/{wg}.sock").unlink(missing_ok=True)


def render(count: int, results: list[tuple[str, float, str]]) -> str:
    lines = [
        SECTION,
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {os.cpu_count()} CPUs, kernel "
        f"{platform.release()}, wireguard-go (userspace), nft {nft_version()}; one namespace,"
        f" {count} sessions with one device each (IPv4 + IPv6), tiers 10/25/50 Mbit/s."
        f" Load average at the end: {os.getloadavg()[0]:.1f} (numbers taken on a busy machine"
        " are inflated; re-run on an idle one).",
        "",
        "| what | seconds | note |",
        "| --- | ---: | --- |",
    ]
    lines += [f"| {what} | {seconds:.3f} | {note} |" for what, seconds, note in results]
    return "\n".join(lines) + "\n"


def nft_version() -> str:
    out = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout
    found = re.search(r"v([\d.]+)", out)
    return found.group(1) if found else "?"


def write_section(text: str) -> None:
    current = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\n"
    if SECTION in current:
        start = current.index(SECTION)
        following = current.find("\n## ", start + len(SECTION))
        end = len(current) if following == -1 else following + 1
        current = current[:start] + text + ("\n" if following != -1 else "") + current[end:]
    else:
        current = current.rstrip("\n") + "\n\n" + text
    BENCHMARKS.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/gateway_bench.py needs root (network namespaces, nftables, tc)")
    results = run(args.peers)
    text = render(args.peers, results)
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
