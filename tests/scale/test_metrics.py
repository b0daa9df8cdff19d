"""`/metrics`: Prometheus text with sessions, purchases, bytes, gateway health and the profile
generation latency histogram; optionally behind a bearer token."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import update

from kswifi.control.app import create_app
from kswifi.control.config import Settings
from kswifi.control.deps import AppContext
from kswifi.control.gateways import service as gateways
from kswifi.control.models import DataSession, Gateway, utcnow
from tests.conftest import ApiUser


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition (None when absent)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(3) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(match.group(4))
    return None


async def _online_gateway(ctx: AppContext, region: str = "eu-west") -> Gateway:
    async with ctx.db.transaction() as db:
        gateway, _token = await gateways.register(
            db,
            ctx.secrets,
            ctx.settings,
            name=f"{region}-metrics",
            region_code=region,
            endpoint="203.0.113.9:51820",
            capacity=50,
        )
        await db.execute(
            update(Gateway)
            .where(Gateway.id == gateway.id)
            .values(is_online=True, last_heartbeat_at=utcnow(), peer_count=7, revision=5)
        )
        return gateway


class TestMetrics:
    async def test_exposition_of_a_working_system(
        self, client: httpx.AsyncClient, ctx: AppContext, user: ApiUser
    ) -> None:
        await _online_gateway(ctx)
        bought = await client.post(
            "/api/purchases",
            json={"plan_code": "premium", "payment_method": "dev"},
            headers=user.headers,
        )
        assert bought.status_code in (200, 201), bought.text
        session_id = bought.json()["session_id"]
        generated = await client.post(
            "/api/connect/generate-profile",
            json={"session_id": session_id, "region": "eu-west"},
            headers=user.headers,
        )
        assert generated.status_code == 200, generated.text
        refused = await client.post(
            "/api/connect/generate-profile",
            json={"session_id": "no-such-session"},
            headers=user.headers,
        )
        assert refused.status_code == 404
        async with ctx.db.transaction() as db:
            await db.execute(
                update(DataSession)
                .where(DataSession.id == session_id)
                .values(rx_bytes=3000, tx_bytes=1000, used_bytes=4000)
            )

        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert response.headers["cache-control"] == "no-store"
        text = response.text
        assert sample(text, "kswifi_sessions", state="active") == 1
        assert sample(text, "kswifi_sessions", state="exhausted") == 0
        assert sample(text, "kswifi_purchases", provider="dev", status="paid") == 1
        assert sample(text, "kswifi_served_bytes_total", direction="rx") == 3000
        assert sample(text, "kswifi_served_bytes_total", direction="tx") == 1000
        assert sample(text, "kswifi_gateways", region="eu-west", state="online") == 1
        assert sample(text, "kswifi_gateway_up", gateway="eu-west-metrics") == 1
        assert sample(text, "kswifi_gateway_peers", gateway="eu-west-metrics") == 7
        assert sample(text, "kswifi_gateway_devices", gateway="eu-west-metrics") == 1
        assert sample(text, "kswifi_gateway_capacity", gateway="eu-west-metrics") == 50
        # The histogram is per process and shared by the apps of this test run: at least ours.
        assert (sample(text, "kswifi_profile_generation_seconds_count") or 0) >= 1
        assert (sample(text, "kswifi_profile_generation_failures_total", status="404") or 0) >= 1
        assert (
            sample(
                text,
                "kswifi_http_requests_total",
                method="POST",
                route="/api/connect/generate-profile",
                status="200",
            )
            or 0
        ) >= 1
        assert sample(text, "process_cpu_seconds_total") is not None

    async def test_unmatched_paths_share_one_label(self, client: httpx.AsyncClient) -> None:
        await client.get("/api/no/such/route/abc123")
        text = (await client.get("/metrics")).text
        assert "abc123" not in text
        assert (sample(text, "kswifi_http_requests_total", route="unmatched") or 0) >= 1

    async def test_offline_and_never_seen_gateways(
        self, client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        gateway = await _online_gateway(ctx, "us-east")
        async with ctx.db.transaction() as db:
            await db.execute(
                update(Gateway)
                .where(Gateway.id == gateway.id)
                .values(last_heartbeat_at=utcnow() - timedelta(hours=1))
            )
            await gateways.register(
                db,
                ctx.secrets,
                ctx.settings,
                name="fresh",
                region_code="us-east",
                endpoint="203.0.113.10:51820",
            )
        text = (await client.get("/metrics")).text
        assert sample(text, "kswifi_gateways", region="us-east", state="offline") == 1
        assert sample(text, "kswifi_gateways", region="us-east", state="never_seen") == 1
        assert sample(text, "kswifi_gateway_up", gateway="us-east-metrics") == 0


@pytest.fixture
async def guarded_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    guarded = settings.model_copy(update={"metrics_token": SecretStr("scrape-me")})
    application: FastAPI = create_app(guarded)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


class TestToken:
    async def test_token_is_required_when_set(self, guarded_client: httpx.AsyncClient) -> None:
        refused = await guarded_client.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        wrong = await guarded_client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        allowed = await guarded_client.get(
            "/metrics", headers={"Authorization": "Bearer scrape-me"}
        )
        assert allowed.status_code == 200 and "kswifi_sessions" in allowed.text
