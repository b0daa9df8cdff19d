"""The control-plane benchmarks still run (tiny sizes, seconds; the real numbers come from
`python -m bench.control_report`, never from the test suite), and the report lands between its
markers without touching the rest of BENCHMARKS.md."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from bench import control_profiles, control_report, control_usage

pytestmark = pytest.mark.postgres


def test_usage_bench_runs() -> None:
    result = control_usage.run(seconds=1.5, gateways=2, batch=20, streams=20)
    assert result.deltas_per_second > 0 and result.baseline_deltas_per_second > 0
    assert result.batched_baseline_deltas_per_second > 0
    assert result.streams == 20 and result.events > 0
    assert not math.isnan(result.p99_seconds)


def test_profile_bench_runs() -> None:
    result = control_profiles.run(seconds=1.5, concurrency=2, rate=10.0, sessions=120)
    assert result.errors == 0 and result.profiles_per_second > 0
    assert result.paced_errors == 0 and result.paced_per_second > 0
    assert 0 < result.paced_p50_seconds <= result.paced_p99_seconds
    assert result.qr_seconds > 0 and result.health_per_second > 0


def test_report_replaces_only_its_section(tmp_path: Path) -> None:
    usage = control_usage.UsageResult(
        250.0, 50_000.0, 90_000.0, 0.8, 1.4, 1.2, 3.0, 120.0, 2000, 10, 5, 1.0
    )
    profiles = control_profiles.ProfileResult(20.0, 0.3, 0.5, 0.9, 0, 0.1, 900.0, 0.04, 8, 1.0)
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Gateway\n\nkeep me\n")
    control_report.write(control_report.section([usage], [profiles], 20.0), path)
    first = path.read_text()
    assert "keep me" in first and first.count(control_report.START) == 1
    assert "| 250 |" in first and "**missed**" in first
    control_report.write(control_report.section([usage], [profiles], 20.0), path)
    assert path.read_text().count(control_report.START) == 1
    assert path.read_text().startswith("# Benchmarks\n\n## Gateway\n\nkeep me\n")
