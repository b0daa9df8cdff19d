"""Prometheus metrics of the control plane, served at `/metrics` (text format 0.0.4).

Two kinds, and why: what happens in this process (requests, their durations, profile
generation latency, open usage streams) is counted by this replica as it happens; the state of
the system (sessions by state, purchases, bytes served, gateway health) lives in the database
and is read at scrape time, so every replica reports the same numbers for it. Sum the first
kind across replicas; take any one replica (`max by`) for the second.
"""

from __future__ import annotations

import contextlib
import hmac
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kswifi.control.config import Settings
from kswifi.control.db import Database
from kswifi.control.deps import AppContext
from kswifi.control.models import (
    SESSION_STATES,
    DataSession,
    Device,
    DeviceStatus,
    Gateway,
    MailStatus,
    OutgoingMail,
    Purchase,
    UsageBatch,
    utcnow,
)

GENERATE_PROFILE_PATH = "/api/connect/generate-profile"
USAGE_STREAM_PATH = "/api/sessions/{session_id}/usage/stream"
METRICS_PATH = "/metrics"
# The classic text format: every Prometheus version reads it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Database-derived numbers are recomputed at most this often, however many scrapers there are.
SNAPSHOT_SECONDS = 2.0

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

HTTP_REQUESTS = Counter(
    "kswifi_http_requests",
    "HTTP requests answered by this replica",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "kswifi_http_request_duration_seconds",
    "Time to answer an HTTP request (to the end of the body; streams excluded)",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
PROFILE_GENERATION = Histogram(
    "kswifi_profile_generation_seconds",
    "Time to generate a Connect Profile, keys, addresses and QR codes included (successes)",
    buckets=(0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
PROFILE_GENERATION_FAILURES = Counter(
    "kswifi_profile_generation_failures",
    "Generate-profile calls that did not succeed, by status",
    ["status"],
    registry=REGISTRY,
)
OPEN_STREAMS = Gauge(
    "kswifi_usage_streams_open",
    "Usage event streams (SSE) open on this replica",
    registry=REGISTRY,
)


# id(route) -> (the route, weakly, its label); routes are unhashable, and ids get reused.
_ROUTE_LABELS: dict[int, tuple[weakref.ref[Any], str]] = {}


def _route_label(scope: Scope) -> str:
    """The matched route's full template (bounded cardinality), never the raw path.

    The route object knows its template relative to the router that included it; the static
    prefix in front of it (`/api`) is what of the request path its pattern does not cover.
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str):
        return "unmatched"
    cached = _ROUTE_LABELS.get(id(route))
    if cached is not None and cached[0]() is route:
        return cached[1]
    path = str(scope.get("path", ""))
    pattern = getattr(route, "path_regex", None)
    prefix = ""
    for start in (index for index, char in enumerate(path) if char == "/"):
        if pattern is not None and pattern.fullmatch(path[start:]):
            prefix = path[:start]
            break
    label = prefix + template
    with contextlib.suppress(TypeError):  # a route type that cannot be weakly referenced
        if len(_ROUTE_LABELS) > 10_000:
            _ROUTE_LABELS.clear()
        _ROUTE_LABELS[id(route)] = (weakref.ref(route), label)
    return label


class MetricsMiddleware:
    """Counts and times every HTTP request; long-lived usage streams are gauged instead."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        streaming = False

        async def send_and_watch(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if status == 200 and _safe_label(scope) == USAGE_STREAM_PATH:
                    streaming = True
                    OPEN_STREAMS.inc()
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            if streaming:
                OPEN_STREAMS.dec()
            _observe(
                _safe_label(scope), str(scope.get("method", "GET")), status, streaming, started
            )


def _safe_label(scope: Scope) -> str:
    try:
        return _route_label(scope)
    except Exception:  # counting must never break a request
        return "unmatched"


def _observe(route: str, method: str, status: int, streaming: bool, started: float) -> None:
    elapsed = time.perf_counter() - started
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    if not streaming and route != METRICS_PATH:
        HTTP_DURATION.labels(method, route).observe(elapsed)
    if route == GENERATE_PROFILE_PATH and method == "POST":
        if status == 200:
            PROFILE_GENERATION.observe(elapsed)
        else:
            PROFILE_GENERATION_FAILURES.labels(str(status)).inc()


# --- state read from the database at scrape time ------------------------------------------------


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self._families


@dataclass
class _Snapshot:
    taken_at: float
    text: bytes


_SNAPSHOTS: weakref.WeakKeyDictionary[Database, _Snapshot] = weakref.WeakKeyDictionary()


async def database_families(db: AsyncSession, settings: Settings, now: datetime) -> list[Metric]:
    """Sessions, purchases, bytes served, devices and gateway health, as metric families."""
    families: list[Metric] = []

    sessions = GaugeMetricFamily("kswifi_sessions", "Data sessions by state", labels=["state"])
    counts = dict(
        (
            await db.execute(select(DataSession.status, func.count()).group_by(DataSession.status))
        ).all()
    )
    for state in SESSION_STATES:
        sessions.add_metric([state], counts.get(state, 0))
    families.append(sessions)

    purchases = GaugeMetricFamily(
        "kswifi_purchases", "Purchases by provider and status", labels=["provider", "status"]
    )
    revenue = CounterMetricFamily(
        "kswifi_revenue_cents", "Paid purchases' amounts, by currency", labels=["currency"]
    )
    rows = await db.execute(
        select(
            Purchase.provider,
            Purchase.status,
            Purchase.currency,
            func.count(),
            func.coalesce(func.sum(Purchase.amount_cents), 0),
        ).group_by(Purchase.provider, Purchase.status, Purchase.currency)
    )
    by_status: dict[tuple[str, str], int] = {}
    by_currency: dict[str, int] = {}
    for provider, status, currency, count, amount in rows:
        by_status[(provider, status)] = by_status.get((provider, status), 0) + int(count)
        if status == "paid":
            by_currency[currency] = by_currency.get(currency, 0) + int(amount)
    for (provider, status), count in sorted(by_status.items()):
        purchases.add_metric([provider, status], count)
    for currency, amount in sorted(by_currency.items()):
        revenue.add_metric([currency], amount)
    families += [purchases, revenue]

    served = CounterMetricFamily(
        "kswifi_served_bytes",
        "Bytes carried for all sessions (rx: from the phones, upload; tx: to them, download)",
        labels=["direction"],
    )
    rx, tx = (
        await db.execute(
            select(
                func.coalesce(func.sum(DataSession.rx_bytes), 0),
                func.coalesce(func.sum(DataSession.tx_bytes), 0),
            )
        )
    ).one()
    served.add_metric(["rx"], int(rx))
    served.add_metric(["tx"], int(tx))
    families.append(served)

    batches = CounterMetricFamily(
        "kswifi_usage_batches", "Usage reports applied (each once), all gateways"
    )
    batches.add_metric([], int(await db.scalar(select(func.count()).select_from(UsageBatch)) or 0))
    families.append(batches)

    families += await _mail_families(db, now)

    devices = dict(
        (
            await db.execute(
                select(Device.gateway_id, func.count())
                .where(Device.status == DeviceStatus.ACTIVE)
                .group_by(Device.gateway_id)
            )
        ).all()
    )
    families += _gateway_families(list(await db.scalars(select(Gateway))), devices, settings, now)
    return families


async def _mail_families(db: AsyncSession, now: datetime) -> list[Metric]:
    messages = GaugeMetricFamily(
        "kswifi_mail_messages", "E-mail kept in the queue, by status", labels=["status"]
    )
    counts = dict(
        (
            await db.execute(
                select(OutgoingMail.status, func.count()).group_by(OutgoingMail.status)
            )
        ).all()
    )
    for status in MailStatus:
        messages.add_metric([status], counts.get(status, 0))
    oldest = await db.scalar(
        select(func.min(OutgoingMail.next_attempt_at)).where(
            OutgoingMail.status.in_([MailStatus.QUEUED, MailStatus.SENDING])
        )
    )
    waiting = GaugeMetricFamily(
        "kswifi_mail_oldest_queued_seconds",
        "How long the longest-waiting unsent e-mail has been due (0: none waiting)",
        value=max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0,
    )
    return [messages, waiting]


def _gateway_families(
    gateways: list[Gateway], devices: dict[str, int], settings: Settings, now: datetime
) -> list[Metric]:
    labels = ["gateway", "region"]
    online = GaugeMetricFamily("kswifi_gateway_up", "1 when the gateway heartbeats", labels=labels)
    peers = GaugeMetricFamily(
        "kswifi_gateway_peers", "Peers the agent reports configured", labels=labels
    )
    active = GaugeMetricFamily(
        "kswifi_gateway_devices", "Active devices placed on the gateway", labels=labels
    )
    capacity = GaugeMetricFamily("kswifi_gateway_capacity", "Devices it may carry", labels=labels)
    lag = GaugeMetricFamily(
        "kswifi_gateway_revision_lag",
        "Desired-state revisions the agent has not applied yet",
        labels=labels,
    )
    heartbeat_age = GaugeMetricFamily(
        "kswifi_gateway_heartbeat_age_seconds", "Since the last heartbeat", labels=labels
    )
    throughput = GaugeMetricFamily(
        "kswifi_gateway_throughput_bps",
        "Throughput the agent reports",
        labels=[*labels, "direction"],
    )
    garden = GaugeMetricFamily(
        "kswifi_gateway_garden_bytes",
        "Walled-garden bytes the gateway forwarded (billed to no session; kernel counters)",
        labels=[*labels, "direction"],
    )
    per_region: dict[tuple[str, str], int] = {}
    grace = settings.offline_after_seconds
    for gateway in gateways:
        label = [gateway.name, gateway.region_code]
        age = (
            (now - gateway.last_heartbeat_at).total_seconds()
            if gateway.last_heartbeat_at is not None
            else None
        )
        is_up = gateway.is_enabled and gateway.is_online and age is not None and age <= grace
        if not gateway.is_enabled:
            state = "disabled"
        elif is_up:
            state = "online"
        elif age is None:
            state = "never_seen"
        else:
            state = "offline"
        key = (gateway.region_code, state)
        per_region[key] = per_region.get(key, 0) + 1
        online.add_metric(label, 1 if is_up else 0)
        peers.add_metric(label, gateway.peer_count)
        active.add_metric(label, devices.get(gateway.id, 0))
        capacity.add_metric(label, gateway.capacity)
        lag.add_metric(label, max(0, gateway.revision - gateway.applied_revision))
        if age is not None:
            heartbeat_age.add_metric(label, age)
        throughput.add_metric([*label, "rx"], gateway.rx_bps)
        throughput.add_metric([*label, "tx"], gateway.tx_bps)
        garden.add_metric([*label, "rx"], gateway.garden_rx_bytes)
        garden.add_metric([*label, "tx"], gateway.garden_tx_bytes)
    states = GaugeMetricFamily(
        "kswifi_gateways", "Gateways by region and health", labels=["region", "state"]
    )
    for (region, state), count in sorted(per_region.items()):
        states.add_metric([region, state], count)
    return [states, online, peers, active, capacity, lag, heartbeat_age, throughput, garden]


async def render(ctx: AppContext) -> bytes:
    """The whole exposition: this process's metrics, then the database snapshot."""
    snapshot = _SNAPSHOTS.get(ctx.db)
    clock = time.monotonic()
    if snapshot is None or clock - snapshot.taken_at > SNAPSHOT_SECONDS:
        async with ctx.db.transaction() as db:
            families = await database_families(db, ctx.settings, utcnow())
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(families))
        snapshot = _Snapshot(clock, generate_latest(registry))
        _SNAPSHOTS[ctx.db] = snapshot
    return generate_latest(REGISTRY) + snapshot.text


def install(app: FastAPI) -> None:
    """Count every request and serve `/metrics` (behind `KSWIFI_METRICS_TOKEN` when set)."""
    app.add_middleware(MetricsMiddleware)

    @app.get(METRICS_PATH, include_in_schema=False)
    async def metrics(request: Request) -> Response:
        ctx: AppContext = request.app.state.ctx
        token = ctx.settings.metrics_token.get_secret_value()
        if token:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return JSONResponse(
                    {"error": {"code": "unauthorized", "message": "Metrics token required"}},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return Response(
            await render(ctx),
            media_type=CONTENT_TYPE,
            headers={"Cache-Control": "no-store"},
        )
