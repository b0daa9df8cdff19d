"""The public catalog and the operators' plan editor, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import httpx
from sqlalchemy import select

from kswifi.control.deps import AppContext
from kswifi.control.models import AuditEntry, DataSession, Plan, Purchase
from kswifi.control.plans.service import GIB
from kswifi.control.sessions import service as sessions_service
from tests.control.plans.accounts import Account

NEW_PLAN: dict[str, Any] = {
    "code": "weekend",
    "name": "Weekend Session",
    "data_limit_mb": 3072,
    "speed_mbps": 40,
    "validity_days": 3,
    "max_devices": 2,
    "price_cents": 999,
    "currency": "eur",
}


async def _audit(ctx: AppContext, action: str) -> list[AuditEntry]:
    async with ctx.db.transaction() as db:
        return list(await db.scalars(select(AuditEntry).where(AuditEntry.action == action)))


class TestCatalog:
    async def test_seeded_plans_are_listed_cheapest_first(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/plans")
        assert response.status_code == 200
        plans = response.json()["plans"]
        assert [plan["code"] for plan in plans] == ["basic", "premium", "ultra"]
        basic, premium, ultra = plans
        assert basic == {
            "code": "basic",
            "name": "Basic Session",
            "data_limit_bytes": GIB,
            "data_limit_mb": 1024,
            "data_text": "1 GB",
            "speed_mbps": 10,
            "validity_days": 7,
            "max_devices": 1,
            "price_cents": 499,
            "currency": "USD",
            "price_text": "$4.99",
        }
        assert (premium["data_limit_mb"], premium["data_text"], premium["speed_mbps"]) == (
            5120,
            "5 GB",
            25,
        )
        assert (ultra["data_text"], ultra["speed_mbps"], ultra["max_devices"]) == ("20 GB", 50, 3)

    async def test_catalog_needs_no_login(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/api/plans")).status_code == 200

    async def test_withdrawn_plan_leaves_the_catalog(
        self, client: httpx.AsyncClient, admin: Account
    ) -> None:
        response = await client.patch(
            "/api/admin/plans/basic", json={"is_active": False}, headers=admin.headers
        )
        assert response.status_code == 200
        assert response.json()["is_active"] is False
        codes = [plan["code"] for plan in (await client.get("/api/plans")).json()["plans"]]
        assert codes == ["premium", "ultra"]
        everything = await client.get("/api/admin/plans", headers=admin.headers)
        assert [plan["code"] for plan in everything.json()["plans"]] == [
            "basic",
            "premium",
            "ultra",
        ]


class TestCreate:
    async def test_admin_creates_a_plan(
        self, client: httpx.AsyncClient, ctx: AppContext, admin: Account
    ) -> None:
        response = await client.post("/api/admin/plans", json=NEW_PLAN, headers=admin.headers)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["code"] == "weekend"
        assert body["data_limit_bytes"] == 3 * GIB
        assert body["data_text"] == "3 GB"
        assert body["currency"] == "EUR"
        assert body["price_text"] == "€9.99"
        assert body["is_active"] is True
        listed = (await client.get("/api/plans")).json()["plans"]
        assert "weekend" in [plan["code"] for plan in listed]
        [entry] = await _audit(ctx, "plan.create")
        assert entry.actor == admin.email
        assert entry.target == "plan:weekend"
        assert json.loads(entry.detail)["speed_mbps"] == 40

    async def test_duplicate_code_is_409(
        self, client: httpx.AsyncClient, ctx: AppContext, admin: Account
    ) -> None:
        response = await client.post(
            "/api/admin/plans", json={**NEW_PLAN, "code": "premium"}, headers=admin.headers
        )
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "plan_exists"
        assert await _audit(ctx, "plan.create") == []

    async def test_bad_fields_are_422_and_write_nothing(
        self, client: httpx.AsyncClient, ctx: AppContext, admin: Account
    ) -> None:
        cases = [
            ({"code": "Has Spaces"}, "code"),
            ({"data_limit_mb": 0}, "data_limit_mb"),
            ({"speed_mbps": -1}, "speed_mbps"),
            ({"validity_days": 0}, "validity_days"),
            ({"price_cents": -5}, "price_cents"),
            ({"currency": "dollars"}, "currency"),
            ({"max_devices": 0}, "max_devices"),
            ({"surprise": True}, "surprise"),
        ]
        for change, field in cases:
            response = await client.post(
                "/api/admin/plans", json={**NEW_PLAN, **change}, headers=admin.headers
            )
            assert response.status_code == 422, (change, response.text)
            error = response.json()["error"]
            assert error["code"] == "validation_error"
            assert field in error["message"]
        async with ctx.db.transaction() as db:
            assert await db.scalar(select(Plan).where(Plan.code == "weekend")) is None

    async def test_customers_cannot_edit_the_catalog(
        self, client: httpx.AsyncClient, buyer: Account
    ) -> None:
        created = await client.post("/api/admin/plans", json=NEW_PLAN, headers=buyer.headers)
        assert created.status_code == 403
        changed = await client.patch(
            "/api/admin/plans/basic", json={"price_cents": 1}, headers=buyer.headers
        )
        assert changed.status_code == 403
        assert (await client.post("/api/admin/plans", json=NEW_PLAN)).status_code == 401
        assert (await client.get("/api/admin/plans", headers=buyer.headers)).status_code == 403


class TestUpdate:
    async def test_admin_changes_a_plan_and_it_is_audited(
        self, client: httpx.AsyncClient, ctx: AppContext, admin: Account
    ) -> None:
        response = await client.patch(
            "/api/admin/plans/premium",
            json={"data_limit_mb": 6144, "price_cents": 1299, "name": "Premium+"},
            headers=admin.headers,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["data_text"], body["price_text"], body["name"]) == (
            "6 GB",
            "$12.99",
            "Premium+",
        )
        [entry] = await _audit(ctx, "plan.update")
        assert entry.actor == admin.email
        assert entry.target == "plan:premium"
        assert json.loads(entry.detail)["price_cents"] == [1499, 1299]

    async def test_unknown_plan_is_404(self, client: httpx.AsyncClient, admin: Account) -> None:
        response = await client.patch(
            "/api/admin/plans/nope", json={"price_cents": 1}, headers=admin.headers
        )
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "plan_not_found"

    async def test_null_and_unknown_fields_are_422(
        self, client: httpx.AsyncClient, ctx: AppContext, admin: Account
    ) -> None:
        for body in ({"name": None}, {"code": "renamed"}, {"speed_mbps": 0}):
            response = await client.patch(
                "/api/admin/plans/basic", json=body, headers=admin.headers
            )
            assert response.status_code == 422, (body, response.text)
        async with ctx.db.transaction() as db:
            plan = await db.scalar(select(Plan).where(Plan.code == "basic"))
            assert plan is not None
            assert (plan.name, plan.speed_mbps) == ("Basic Session", 10)

    async def test_editing_a_plan_never_changes_a_sold_session(
        self, client: httpx.AsyncClient, ctx: AppContext, admin: Account, buyer: Account
    ) -> None:
        async with ctx.db.transaction() as db:
            plan = await db.scalar(select(Plan).where(Plan.code == "ultra"))
            assert plan is not None
            purchase = Purchase(
                user_id=buyer.id,
                plan_id=plan.id,
                provider="dev",
                status="paid",
                amount_cents=0,
                currency=plan.currency,
            )
            db.add(purchase)
            await db.flush()
            sold = (
                await sessions_service.create_for_purchase(
                    db, user_id=buyer.id, purchase_id=purchase.id, plan=plan, activation_days=30
                )
            ).session
            sold_id = sold.id
        response = await client.patch(
            "/api/admin/plans/ultra",
            json={"data_limit_mb": 512, "speed_mbps": 5, "validity_days": 1, "max_devices": 1},
            headers=admin.headers,
        )
        assert response.status_code == 200
        async with ctx.db.transaction() as db:
            session = await db.get(DataSession, sold_id)
            assert session is not None
            assert session.data_limit_bytes == 20 * GIB
            assert session.speed_mbps == 50
            assert session.validity_seconds == 30 * 86_400
            assert session.max_devices == 3
