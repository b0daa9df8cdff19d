"""The app's cross-cutting behaviour: health, error shape, body limits."""

from __future__ import annotations

from pathlib import Path

import httpx

from kswifi.control.config import Settings


class TestErrorShape:
    async def test_health(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/health")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    async def test_unknown_route_is_json_404(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/no-such-thing")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"

    async def test_oversized_body_is_413(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/api/health", content=b"x" * 2_000_000)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"


class TestEventBusDefault:
    """With PostgreSQL and no KSWIFI_EVENTS_URL, replicas still hear each other's changes."""

    def test_sqlite_stays_in_process(self, tmp_path: Path) -> None:
        from kswifi.control.app import _make_event_bus
        from kswifi.control.events import InProcessEventBus

        settings = Settings(data_dir=tmp_path)
        assert settings.resolved_events_url == ""
        assert isinstance(_make_event_bus(settings), InProcessEventBus)

    def test_postgresql_uses_its_own_listen_notify(self, tmp_path: Path) -> None:
        from kswifi.control.app import _make_event_bus
        from kswifi.control.events_remote import PostgresEventBus

        url = "postgresql+asyncpg://postgres@127.0.0.1:5432/kswifi"
        settings = Settings(data_dir=tmp_path, database_url=url)
        assert settings.resolved_events_url == url
        assert isinstance(_make_event_bus(settings), PostgresEventBus)

    def test_an_explicit_bus_wins(self, tmp_path: Path) -> None:
        settings = Settings(
            data_dir=tmp_path,
            database_url="postgresql+asyncpg://postgres@127.0.0.1:5432/kswifi",
            events_url="redis://127.0.0.1:6379/5",
        )
        assert settings.resolved_events_url == "redis://127.0.0.1:6379/5"


async def test_the_stripe_webhook_route_is_absent_without_stripe(
    client: httpx.AsyncClient,
) -> None:
    """Not configured: no route at all (404 with the JSON error shape), none in the schema."""
    event = {"id": "evt_x", "type": "checkout.session.completed"}
    response = await client.post("/api/purchases/stripe/webhook", json=event)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    schema = (await client.get("/api/openapi.json")).json()
    assert "/api/purchases/stripe/webhook" not in schema["paths"]
