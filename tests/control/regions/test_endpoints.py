"""The regions API: public list with health and latency hints, the probe, the admin editor."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from kswifi.control.deps import AppContext
from kswifi.control.models import AuditEntry, Region
from tests.control.regions.conftest import COUNTRY_HEADER, GB_ADDRESS, JP_ADDRESS, AddGateway


def _by_code(body: dict[str, object]) -> dict[str, dict[str, object]]:
    regions = body["regions"]
    assert isinstance(regions, list)
    return {region["code"]: region for region in regions}


class TestPublicList:
    async def test_seeded_regions_without_gateways(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/regions")
        assert response.status_code == 200
        body = response.json()
        regions = _by_code(body)
        assert set(regions) == {"us-east", "eu-west", "ap-southeast"}
        assert regions["us-east"]["name"] == "US East"
        assert regions["us-east"]["location"] == "New York"
        assert regions["eu-west"]["location"] == "London"
        assert regions["ap-southeast"]["location"] == "Singapore"
        for region in regions.values():
            assert region["status"] == "no_gateways" and region["online"] is False
            assert region["capacity_left"] == 0 and region["recommended"] is False
            # The test client connects from 127.0.0.1: no location, no distance.
            assert region["distance"] is None
            assert region["latency_hint"] == "Test to see your latency"
            assert region["probe_url"] == f"http://testserver/api/regions/{region['code']}/probe"
        assert body["client_country"] is None and body["recommended_region"] is None

    async def test_nearest_first_with_hints_relative_to_the_caller(
        self, client: httpx.AsyncClient
    ) -> None:
        body = (await client.get("/api/regions", headers={COUNTRY_HEADER: "GB"})).json()
        assert [region["code"] for region in body["regions"]] == [
            "eu-west",
            "us-east",
            "ap-southeast",
        ]
        regions = _by_code(body)
        assert regions["eu-west"]["latency_hint"] == "Same continent: 20–50 ms"
        assert regions["us-east"]["latency_hint"] == "Neighbouring continent: 70–120 ms"
        assert regions["ap-southeast"]["distance"] == 2
        assert (body["client_country"], body["client_continent"]) == ("GB", "EU")

    async def test_forwarded_address_is_located_with_the_embedded_data(
        self, client: httpx.AsyncClient
    ) -> None:
        body = (await client.get("/api/regions", headers={"X-Forwarded-For": JP_ADDRESS})).json()
        assert body["client_country"] == "JP"
        assert body["regions"][0]["code"] == "ap-southeast"

    async def test_health_counts_only_healthy_gateways(
        self, client: httpx.AsyncClient, add_gateway: AddGateway
    ) -> None:
        await add_gateway("eu-west", capacity=100)
        await add_gateway("eu-west", capacity=50)
        await add_gateway("eu-west", online=False, capacity=500)
        await add_gateway("us-east", online=False)
        await add_gateway("ap-southeast", online=None)  # registered, never seen
        regions = _by_code(
            (await client.get("/api/regions", headers={"X-Forwarded-For": GB_ADDRESS})).json()
        )
        eu = regions["eu-west"]
        assert (eu["status"], eu["online"], eu["healthy_gateways"], eu["gateways"]) == (
            "online",
            True,
            2,
            3,
        )
        assert eu["capacity_left"] == 150 and eu["recommended"] is True
        assert regions["us-east"]["status"] == "offline"
        assert regions["ap-southeast"]["status"] == "offline"
        assert regions["ap-southeast"]["gateways"] == 1

    async def test_inactive_regions_are_not_listed(
        self, client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        async with ctx.db.transaction() as db:
            region = await db.get(Region, "ap-southeast")
            assert region is not None
            region.is_active = False
        regions = _by_code((await client.get("/api/regions")).json())
        assert set(regions) == {"us-east", "eu-west"}


class TestProbe:
    async def test_probe_is_tiny_and_never_cached(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/regions/eu-west/probe")
        assert response.status_code == 204
        assert response.content == b""
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["access-control-allow-origin"] == "*"
        assert response.headers["x-kswifi-region"] == "eu-west"
        head = await client.head("/api/regions/eu-west/probe")
        assert head.status_code == 204

    async def test_unknown_region_is_404(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/regions/mars-north/probe")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "region_not_found"
        assert (await client.get("/api/regions/NOT_A_CODE/probe")).status_code == 422


class TestAdmin:
    async def test_create_lists_and_audits(
        self, client: httpx.AsyncClient, ctx: AppContext, admin_headers: dict[str, str]
    ) -> None:
        body = {
            "code": "sa-east",
            "name": "South America",
            "location": "São Paulo",
            "continent": "SA",
            "dns_servers": ["9.9.9.9", "2620:fe::fe", "9.9.9.9"],
        }
        created = await client.post("/api/admin/regions", json=body, headers=admin_headers)
        assert created.status_code == 201, created.text
        out = created.json()
        assert out["dns_servers"] == ["9.9.9.9", "2620:fe::fe"] and out["is_active"] is True
        listed = (await client.get("/api/admin/regions", headers=admin_headers)).json()
        assert "sa-east" in {region["code"] for region in listed["regions"]}
        # A Brazilian caller is now nearest to the new region, and its probe answers.
        public = (await client.get("/api/regions", headers={COUNTRY_HEADER: "BR"})).json()
        assert public["regions"][0]["code"] == "sa-east"
        assert (await client.get("/api/regions/sa-east/probe")).status_code == 204
        async with ctx.db.transaction() as db:
            region = await db.get(Region, "sa-east")
            assert region is not None and region.dns_servers == "9.9.9.9, 2620:fe::fe"
            audit = list(
                await db.scalars(select(AuditEntry).where(AuditEntry.action == "region.create"))
            )
        assert len(audit) == 1 and audit[0].target == "region:sa-east"
        assert audit[0].actor.startswith("ops-")

    async def test_duplicate_code_is_409_and_writes_nothing(
        self, client: httpx.AsyncClient, ctx: AppContext, admin_headers: dict[str, str]
    ) -> None:
        body = {"code": "eu-west", "name": "Again", "continent": "EU"}
        response = await client.post("/api/admin/regions", json=body, headers=admin_headers)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "region_exists"
        async with ctx.db.transaction() as db:
            region = await db.get(Region, "eu-west")
            assert region is not None and region.name == "EU West"
            assert not list(await db.scalars(select(AuditEntry)))

    async def test_bad_input_is_422(
        self, client: httpx.AsyncClient, admin_headers: dict[str, str]
    ) -> None:
        for body in (
            {"code": "x", "name": "Short code", "continent": "EU"},
            {"code": "eu-north", "name": "Bad continent", "continent": "XX"},
            {"code": "eu-north", "name": "Bad DNS", "continent": "EU", "dns_servers": ["dns"]},
            {"code": "eu-north", "name": "No DNS", "continent": "EU", "dns_servers": []},
            {"code": "eu-north", "name": "Extra", "continent": "EU", "colour": "blue"},
        ):
            response = await client.post("/api/admin/regions", json=body, headers=admin_headers)
            assert response.status_code == 422, body
            assert response.json()["error"]["code"] == "validation_error"

    async def test_only_operators(
        self, client: httpx.AsyncClient, user: object, ctx: AppContext
    ) -> None:
        headers = user.headers  # type: ignore[attr-defined]
        body = {"code": "eu-north", "name": "EU North", "continent": "EU"}
        assert (await client.post("/api/admin/regions", json=body)).status_code == 401
        forbidden = await client.post("/api/admin/regions", json=body, headers=headers)
        assert forbidden.status_code == 403
        assert (await client.get("/api/admin/regions", headers=headers)).status_code == 403
        patched = await client.patch(
            "/api/admin/regions/eu-west", json={"name": "Mine"}, headers=headers
        )
        assert patched.status_code == 403
        async with ctx.db.transaction() as db:
            assert await db.get(Region, "eu-north") is None

    async def test_update_changes_only_given_fields_and_audits_the_diff(
        self, client: httpx.AsyncClient, ctx: AppContext, admin_headers: dict[str, str]
    ) -> None:
        response = await client.patch(
            "/api/admin/regions/eu-west",
            json={"location": "Dublin", "dns_servers": ["9.9.9.9"]},
            headers=admin_headers,
        )
        assert response.status_code == 200, response.text
        out = response.json()
        assert (out["name"], out["location"], out["dns_servers"]) == (
            "EU West",
            "Dublin",
            ["9.9.9.9"],
        )
        async with ctx.db.transaction() as db:
            audit = list(
                await db.scalars(select(AuditEntry).where(AuditEntry.action == "region.update"))
            )
        assert len(audit) == 1 and "Dublin" in audit[0].detail and "name" not in audit[0].detail

    async def test_deactivated_region_leaves_the_public_list_and_the_probe(
        self, client: httpx.AsyncClient, admin_headers: dict[str, str]
    ) -> None:
        assert (await client.get("/api/regions/us-east/probe")).status_code == 204
        response = await client.patch(
            "/api/admin/regions/us-east", json={"is_active": False}, headers=admin_headers
        )
        assert response.status_code == 200 and response.json()["is_active"] is False
        assert "us-east" not in _by_code((await client.get("/api/regions")).json())
        assert (await client.get("/api/regions/us-east/probe")).status_code == 404

    async def test_update_errors(
        self, client: httpx.AsyncClient, admin_headers: dict[str, str]
    ) -> None:
        missing = await client.patch(
            "/api/admin/regions/mars-north", json={"name": "Mars"}, headers=admin_headers
        )
        assert missing.status_code == 404
        null = await client.patch(
            "/api/admin/regions/eu-west", json={"name": None}, headers=admin_headers
        )
        assert null.status_code == 422
        code = await client.patch(
            "/api/admin/regions/eu-west", json={"code": "eu-x"}, headers=admin_headers
        )
        assert code.status_code == 422
