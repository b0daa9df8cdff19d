"""Operators making vouchers and exporting them, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import re

import httpx
from sqlalchemy import select

from kswifi.control.deps import AppContext
from kswifi.control.models import AuditEntry, Plan, Voucher
from tests.control.plans.accounts import Account
from tests.control.purchases.db_state import count

CODE = re.compile(r"^KSW(-[0-9A-HJKMNP-TV-Z]{4}){4}$")


async def _audit(ctx: AppContext) -> list[AuditEntry]:
    async with ctx.db.transaction() as db:
        return list(await db.scalars(select(AuditEntry).order_by(AuditEntry.created_at)))


class TestCreate:
    async def test_admin_makes_codes_for_a_plan(
        self, client: httpx.AsyncClient, ctx: AppContext, admin: Account
    ) -> None:
        response = await client.post(
            "/api/admin/vouchers", json={"plan_code": "ultra", "count": 25}, headers=admin.headers
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["plan_code"], body["count"]) == ("ultra", 25)
        codes = body["codes"]
        assert len(set(codes)) == 25
        assert all(CODE.match(code) for code in codes)
        async with ctx.db.transaction() as db:
            ultra = await db.scalar(select(Plan).where(Plan.code == "ultra"))
            stored = list(await db.scalars(select(Voucher)))
        assert ultra is not None
        assert {v.code for v in stored} == set(codes)
        assert {(v.plan_id, v.created_by, v.redeemed_at) for v in stored} == {
            (ultra.id, admin.email, None)
        }
        [entry] = await _audit(ctx)
        assert (entry.actor, entry.action, entry.target) == (
            admin.email,
            "voucher.create",
            "plan:ultra",
        )
        assert json.loads(entry.detail) == {"count": 25}

    async def test_bad_requests_make_nothing(
        self, client: httpx.AsyncClient, ctx: AppContext, admin: Account
    ) -> None:
        cases = [
            ({"plan_code": "basic", "count": 0}, 422),
            ({"plan_code": "basic", "count": 10_001}, 422),
            ({"plan_code": "basic"}, 422),
            ({"plan_code": "gold", "count": 5}, 404),
        ]
        for body, status in cases:
            response = await client.post("/api/admin/vouchers", json=body, headers=admin.headers)
            assert response.status_code == status, (body, response.text)
        async with ctx.db.transaction() as db:
            basic = await db.scalar(select(Plan).where(Plan.code == "basic"))
            assert basic is not None
            basic.is_active = False
        withdrawn = await client.post(
            "/api/admin/vouchers", json={"plan_code": "basic", "count": 5}, headers=admin.headers
        )
        assert withdrawn.status_code == 409
        assert await count(ctx, Voucher) == 0
        assert await _audit(ctx) == []

    async def test_customers_cannot_make_or_export_vouchers(
        self, client: httpx.AsyncClient, buyer: Account
    ) -> None:
        made = await client.post(
            "/api/admin/vouchers", json={"plan_code": "basic", "count": 1}, headers=buyer.headers
        )
        assert made.status_code == 403
        exported = await client.get("/api/admin/vouchers.csv", headers=buyer.headers)
        assert exported.status_code == 403
        assert (await client.get("/api/admin/vouchers.csv")).status_code == 401


class TestExport:
    async def test_csv_shows_every_voucher_and_who_redeemed_it(
        self, client: httpx.AsyncClient, ctx: AppContext, admin: Account, buyer: Account
    ) -> None:
        made = await client.post(
            "/api/admin/vouchers", json={"plan_code": "basic", "count": 3}, headers=admin.headers
        )
        codes = made.json()["codes"]
        await client.post(
            "/api/admin/vouchers", json={"plan_code": "ultra", "count": 2}, headers=admin.headers
        )
        redeemed = await client.post(
            "/api/purchases",
            json={"payment_method": "voucher", "voucher_code": codes[1]},
            headers=buyer.headers,
        )
        assert redeemed.status_code == 201

        response = await client.get("/api/admin/vouchers.csv", headers=admin.headers)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert "attachment" in response.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert len(rows) == 5
        assert list(rows[0]) == [
            "code",
            "plan_code",
            "status",
            "created_at",
            "created_by",
            "redeemed_at",
            "redeemed_by",
            "purchase_id",
        ]
        by_code = {row["code"]: row for row in rows}
        spent = by_code[codes[1]]
        assert (spent["status"], spent["redeemed_by"]) == ("redeemed", buyer.email)
        assert spent["purchase_id"] == redeemed.json()["id"]
        assert spent["redeemed_at"]
        unused = by_code[codes[0]]
        assert (unused["status"], unused["redeemed_by"], unused["created_by"]) == (
            "unused",
            "",
            admin.email,
        )

        only_basic = await client.get(
            "/api/admin/vouchers.csv", params={"plan": "basic"}, headers=admin.headers
        )
        assert {row["code"] for row in csv.DictReader(io.StringIO(only_basic.text))} == set(codes)
        unknown = await client.get(
            "/api/admin/vouchers.csv", params={"plan": "gold"}, headers=admin.headers
        )
        assert unknown.status_code == 404
        actions = [entry.action for entry in await _audit(ctx)]
        assert actions.count("voucher.export") == 2
