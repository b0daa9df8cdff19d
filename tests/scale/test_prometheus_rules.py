"""deploy/prometheus/alerts.yml: valid rules (`promtool check rules`), alerts that fire on
the series they are written for (`promtool test rules`), expositions of both processes that
pass `promtool check metrics`, and no rule naming a metric neither process exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from kswifi.agent.metrics import AgentMetrics
from kswifi.control.deps import AppContext
from kswifi.protocol import DesiredState
from tests.conftest import ApiUser
from tests.scale.test_metrics import _online_gateway

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
METRIC = re.compile(r"\b(kswifi_[a-z0-9_]+|up)\b")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert Path(PROMTOOL).exists(), "promtool is missing: `make system-deps` installs prometheus"
    return subprocess.run(
        [PROMTOOL, *args], input=stdin, capture_output=True, text=True, cwd=RULES, timeout=120
    )


def test_the_rules_are_valid() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_alerts_fire_on_their_series_and_only_then() -> None:
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


class _Agent:
    desired_state = DesiredState(revision=3, peers=[])
    applied_revision = 3
    control_plane_up = True

    class tracker:
        @staticmethod
        def pending() -> list[int]:
            return [1, 2]

    class throughput:
        rx_bps = 8_000
        tx_bps = 80_000


def _agent_exposition() -> str:
    metrics = AgentMetrics()
    metrics.watch(_Agent())  # type: ignore[arg-type]
    metrics.bytes_served.labels(direction="upload").inc(10)
    metrics.reconcile_seconds.observe(0.01)
    return generate_latest(metrics.registry).decode()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_both_expositions_pass_promtool_and_cover_every_rule(
    client: httpx.AsyncClient, ctx: AppContext, user: ApiUser
) -> None:
    await _online_gateway(ctx)
    await client.post(
        "/api/purchases", json={"plan_code": "basic", "payment_method": "dev"}, headers=user.headers
    )
    control = (await client.get("/metrics")).text
    agent = _agent_exposition()
    for name, text in (("control plane", control), ("agent", agent)):
        checked = promtool("check", "metrics", stdin=text)
        assert checked.returncode == 0, f"{name}: {checked.stdout}{checked.stderr}"
    exported = {
        line.split()[2] for line in (control + agent).splitlines() if line.startswith("# TYPE")
    }
    series = exported | {f"{name}_total" for name in exported} | {"up"}
    series |= {f"{name}_bucket" for name in exported}
    rules = (RULES / "alerts.yml").read_text()
    expressions = "\n".join(re.findall(r"expr: ([^\n]+(?:\n {10,}[^\n]+)*)", rules))
    named = set(METRIC.findall(expressions))
    assert named, "no metric found in the rules"
    assert named <= series, sorted(named - series)
