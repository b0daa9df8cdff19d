"""The app's cross-cutting behaviour: health, error shape, body limits."""

from __future__ import annotations

import httpx


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
