"""Run every benchmark in bench/ (`make bench`), each as `python -m bench.NAME`, and say which
need root.

A benchmark is a module of this folder with a top-level `def main(`: the `*_bench.py` modules
(bench/gateway_bench.py) and the control-plane ones (bench/control_*.py; a `*_report` module
runs last, after the measurements it summarizes). Helpers (`*_common.py`) are skipped. A module
needs root when it says `NEEDS_ROOT = True` or checks `geteuid`; without root those are skipped
with the reason, and the others still run. Each writes its own section of BENCHMARKS.md.

    python -m bench.run_all [--list] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
_MAIN = re.compile(r"^def main\(", re.M)
_ROOT = re.compile(r"^NEEDS_ROOT\s*=\s*True|geteuid\(\)", re.M)


@dataclass(frozen=True)
class Benchmark:
    name: str
    needs_root: bool


def discover() -> list[Benchmark]:
    """Benchmarks in run order: `*_bench` modules, then the others, `*_report` ones last."""
    found = []
    for path in sorted(HERE.glob("*.py")):
        name = path.stem
        if name in ("__init__", "run_all") or name.endswith("_common"):
            continue
        text = path.read_text()
        if not _MAIN.search(text):
            continue
        found.append(Benchmark(name, bool(_ROOT.search(text))))
    return sorted(
        found, key=lambda b: (b.name.endswith("_report"), not b.name.endswith("_bench"), b.name)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--only", nargs="*", default=None, help="run only these modules")
    args = parser.parse_args(argv)
    benchmarks = discover()
    if args.only:
        benchmarks = [b for b in benchmarks if b.name in args.only]
    root = os.geteuid() == 0
    for bench in benchmarks:
        print(f"bench.{bench.name}: {'needs root' if bench.needs_root else 'no root needed'}")
    if args.list:
        return 0
    failed = []
    for bench in benchmarks:
        if bench.needs_root and not root:
            print(f"==> skipping bench.{bench.name}: needs root (network namespaces, nft, tc)")
            continue
        print(f"==> bench.{bench.name}", flush=True)
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", f"bench.{bench.name}"], cwd=HERE.parent, check=False
        )
        took = time.monotonic() - started
        status = "ok" if done.returncode == 0 else f"failed ({done.returncode})"
        print(f"==> bench.{bench.name}: {status} in {took:.0f} s", flush=True)
        if done.returncode != 0:
            failed.append(bench.name)
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
