"""Prometheus metrics of the gateway agent, served on a loopback address when asked to.

Counters and the reconcile histogram are updated by the agent as things happen; gauges are
read from the agent's state when Prometheus scrapes, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kswifi.protocol import DesiredState


class _Rates(Protocol):
    @property
    def rx_bps(self) -> int: ...

    @property
    def tx_bps(self) -> int: ...


class _Spool(Protocol):
    def pending(self) -> Sized: ...


class WatchedAgent(Protocol):
    """What the agent's gauges read (the `Agent`, which imports this module)."""

    @property
    def desired_state(self) -> DesiredState | None: ...

    @property
    def applied_revision(self) -> int: ...

    @property
    def control_plane_up(self) -> bool | None: ...

    @property
    def tracker(self) -> _Spool: ...

    @property
    def throughput(self) -> _Rates: ...


class AgentMetrics:
    """The agent's metrics in a registry of its own (several agents may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reconcile_seconds = Histogram(
            "kswifi_gateway_reconcile_seconds",
            "Time to diff and apply one desired state",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.bytes_served = Counter(
            "kswifi_gateway_bytes",
            "Bytes counted by the kernel's session counters",
            ["direction"],
            registry=self.registry,
        )
        self.quota_exhaustions = Counter(
            "kswifi_gateway_quota_exhaustions",
            "Sessions whose kernel quota ran out (the kernel then drops their packets)",
            registry=self.registry,
        )
        self.control_plane_errors = Counter(
            "kswifi_gateway_control_plane_errors",
            "Calls to the control plane that failed",
            registry=self.registry,
        )

    def watch(self, agent: WatchedAgent) -> None:
        """Add the gauges read from `agent` at scrape time."""
        self.registry.register(_AgentState(agent))

    def serve(self, listen: str) -> None:
        """Serve `/metrics` on HOST:PORT in a background thread."""
        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry)


class _AgentState(Collector):
    def __init__(self, agent: WatchedAgent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[GaugeMetricFamily]:
        agent = self.agent
        state = agent.desired_state
        yield _gauge(
            "kswifi_gateway_peers", "Peers in the desired state", len(state.peers) if state else 0
        )
        yield _gauge(
            "kswifi_gateway_desired_revision",
            "Revision of the last desired state received",
            state.revision if state else 0,
        )
        yield _gauge(
            "kswifi_gateway_applied_revision",
            "Revision the data plane was last reconciled to",
            agent.applied_revision,
        )
        yield _gauge(
            "kswifi_gateway_spooled_reports",
            "Usage reports on disk not yet acknowledged by the control plane",
            len(agent.tracker.pending()),
        )
        yield _gauge(
            "kswifi_gateway_control_plane_up",
            "1 when the last call to the control plane succeeded",
            1 if agent.control_plane_up else 0,
        )
        rate = GaugeMetricFamily(
            "kswifi_gateway_throughput_bytes_per_second",
            "Bytes per second through the WireGuard interface over the last second",
            labels=["direction"],
        )
        rate.add_metric(["upload"], agent.throughput.rx_bps / 8)
        rate.add_metric(["download"], agent.throughput.tx_bps / 8)
        yield rate


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
