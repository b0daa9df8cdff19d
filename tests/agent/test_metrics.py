"""The agent's Prometheus metrics, scraped over HTTP from a real exporter on loopback."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kswifi.agent.config import GatewaySettings
from kswifi.agent.metrics import AgentMetrics

from .fakes import FakeControlPlane, FakeDataplane
from .test_agent import Clock, desired, make_agent, peer, poll_once


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


async def test_metrics_follow_reconcile_usage_and_control_plane(tmp_path: Path) -> None:
    settings = GatewaySettings(
        control_url="http://control.invalid",
        token="t0ken",
        endpoint="gw.example.net:51820",
        wan_interface="eth9",
        state_dir=tmp_path / "state",
    )
    kernel = FakeDataplane()
    control = FakeControlPlane([desired(4, peer(2, "s1"), peer(3, "s2", quota=1000))])
    agent = make_agent(settings, kernel, control, Clock())
    metrics = agent.metrics
    assert isinstance(metrics, AgentMetrics)
    port = _free_port()
    metrics.watch(agent)
    metrics.serve(f"127.0.0.1:{port}")

    await poll_once(agent)
    kernel.count("s1", up=3000, down=10_000)
    served = kernel.count("s2", down=5000)  # past its 1000-byte quota: the kernel stops it
    await agent.usage_once()
    control.up = False
    await agent.deliver_usage()

    values = _scrape(port)
    assert values["kswifi_gateway_peers"] == 2
    assert values["kswifi_gateway_desired_revision"] == 4
    assert values["kswifi_gateway_applied_revision"] == 4
    assert values["kswifi_gateway_bytes_total{direction=upload}"] == 3000
    assert values["kswifi_gateway_bytes_total{direction=download}"] == 10_000 + served
    assert values["kswifi_gateway_quota_exhaustions_total"] == 1
    assert values["kswifi_gateway_control_plane_errors_total"] == 1
    assert values["kswifi_gateway_spooled_reports"] == 1
    assert values["kswifi_gateway_reconcile_seconds_count"] == 1
