"""Races settled by the database: voucher double-spends and repeated Idempotency-Keys."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from sqlalchemy import select

from kswifi.control.deps import AppContext
from kswifi.control.models import Purchase
from tests.control.plans.accounts import Account
from tests.control.purchases.conftest import MakeAccount, MakeVouchers
from tests.control.purchases.db_state import state, voucher

CONCURRENT = 30

# stripe-python's HTTPXClient hands its form body to httpx as `data=`; httpx prefers `content=`.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Use 'content=<...>' to upload raw bytes/text content.:DeprecationWarning"
)


class TestVoucherDoubleSpend:
    async def test_concurrent_redemptions_give_exactly_one_session(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        make_account: MakeAccount,
        make_vouchers: MakeVouchers,
    ) -> None:
        [code] = await make_vouchers("premium")
        accounts = [await make_account() for _ in range(5)]
        responses = await asyncio.gather(
            *(
                client.post(
                    "/api/purchases",
                    json={"payment_method": "voucher", "voucher_code": code},
                    headers=accounts[i % len(accounts)].headers,
                )
                for i in range(CONCURRENT)
            )
        )
        statuses = Counter(response.status_code for response in responses)
        assert statuses == {201: 1, 409: CONCURRENT - 1}, statuses
        losers = [r.json()["error"] for r in responses if r.status_code == 409]
        assert {error["code"] for error in losers} == {"voucher_used"}
        assert all("already been used" in error["message"] for error in losers)
        [winner] = [r.json() for r in responses if r.status_code == 201]
        assert await state(ctx) == {"purchases": 1, "sessions": 1, "events": 0}
        spent = await voucher(ctx, code)
        assert spent.purchase_id == winner["id"]
        async with ctx.db.transaction() as db:
            purchase = await db.get(Purchase, winner["id"])
            assert purchase is not None
            assert spent.redeemed_by == purchase.user_id

    async def test_concurrent_redemptions_of_different_codes_all_succeed(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        buyer: Account,
        make_vouchers: MakeVouchers,
    ) -> None:
        codes = await make_vouchers("basic", count=10)
        responses = await asyncio.gather(
            *(
                client.post(
                    "/api/purchases",
                    json={"payment_method": "voucher", "voucher_code": code},
                    headers=buyer.headers,
                )
                for code in codes
            )
        )
        assert [r.status_code for r in responses] == [201] * 10
        assert await state(ctx) == {"purchases": 10, "sessions": 10, "events": 0}


class TestIdempotencyKey:
    async def test_same_key_returns_the_original_purchase(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account
    ) -> None:
        headers = {**buyer.headers, "Idempotency-Key": "order-42"}
        body = {"plan_code": "basic", "payment_method": "dev"}
        first = await client.post("/api/purchases", json=body, headers=headers)
        again = await client.post("/api/purchases", json=body, headers=headers)
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json() == first.json()
        assert await state(ctx) == {"purchases": 1, "sessions": 1, "events": 0}

    async def test_same_key_with_another_body_is_422(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account
    ) -> None:
        headers = {**buyer.headers, "Idempotency-Key": "order-43"}
        first = await client.post(
            "/api/purchases", json={"plan_code": "basic", "payment_method": "dev"}, headers=headers
        )
        assert first.status_code == 201
        for other in (
            {"plan_code": "ultra", "payment_method": "dev"},
            {"plan_code": "basic", "payment_method": "stripe"},
            {"payment_method": "voucher", "voucher_code": "KSW-0000-0000-0000-0000"},
        ):
            response = await client.post("/api/purchases", json=other, headers=headers)
            assert response.status_code == 422, other
            assert response.json()["error"]["code"] == "idempotency_key_reused"
        assert await state(ctx) == {"purchases": 1, "sessions": 1, "events": 0}

    async def test_keys_belong_to_one_user(
        self, client: httpx.AsyncClient, ctx: AppContext, make_account: MakeAccount
    ) -> None:
        body = {"plan_code": "basic", "payment_method": "dev"}
        ids = set()
        for _ in range(2):
            account = await make_account()
            response = await client.post(
                "/api/purchases",
                json=body,
                headers={**account.headers, "Idempotency-Key": "shared-key"},
            )
            assert response.status_code == 201
            ids.add(response.json()["id"])
        assert len(ids) == 2

    async def test_voucher_retry_with_the_key_is_not_a_double_spend(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        buyer: Account,
        make_vouchers: MakeVouchers,
    ) -> None:
        [code] = await make_vouchers("ultra")
        headers = {**buyer.headers, "Idempotency-Key": "redeem-once"}
        body = {"payment_method": "voucher", "voucher_code": code}
        first = await client.post("/api/purchases", json=body, headers=headers)
        retry = await client.post(
            "/api/purchases", json={**body, "voucher_code": code.lower()}, headers=headers
        )
        assert (first.status_code, retry.status_code) == (201, 200)
        assert retry.json()["id"] == first.json()["id"]
        without_key = await client.post("/api/purchases", json=body, headers=buyer.headers)
        assert without_key.status_code == 409

    async def test_failed_attempt_can_be_retried_with_the_same_key(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account
    ) -> None:
        headers = {**buyer.headers, "Idempotency-Key": "try-again"}
        body = {"plan_code": "basic", "payment_method": "dev"}
        ctx.settings.dev_payments = False
        assert (await client.post("/api/purchases", json=body, headers=headers)).status_code == 403
        ctx.settings.dev_payments = True
        assert (await client.post("/api/purchases", json=body, headers=headers)).status_code == 201

    async def test_bad_keys_are_422(self, client: httpx.AsyncClient, buyer: Account) -> None:
        body = {"plan_code": "basic", "payment_method": "dev"}
        for key in ("x" * 129, "has space"):
            response = await client.post(
                "/api/purchases", json=body, headers={**buyer.headers, "Idempotency-Key": key}
            )
            assert response.status_code == 422, key

    async def test_concurrent_requests_with_one_key_make_one_purchase(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account
    ) -> None:
        headers = {**buyer.headers, "Idempotency-Key": "double-click"}
        body = {"plan_code": "premium", "payment_method": "dev"}
        responses = await asyncio.gather(
            *(client.post("/api/purchases", json=body, headers=headers) for _ in range(CONCURRENT))
        )
        statuses = Counter(response.status_code for response in responses)
        assert statuses == {201: 1, 200: CONCURRENT - 1}, statuses
        assert len({response.json()["id"] for response in responses}) == 1
        assert await state(ctx) == {"purchases": 1, "sessions": 1, "events": 0}
        async with ctx.db.transaction() as db:
            keys = list(await db.scalars(select(Purchase.idempotency_key)))
        assert keys == ["double-click"]

    async def test_concurrent_stripe_requests_with_one_key_make_one_checkout(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account
    ) -> None:
        headers = {**buyer.headers, "Idempotency-Key": "pay-once"}
        body = {"plan_code": "basic", "payment_method": "stripe"}
        responses = await asyncio.gather(
            *(client.post("/api/purchases", json=body, headers=headers) for _ in range(10))
        )
        assert Counter(r.status_code for r in responses) == {201: 1, 200: 9}
        assert len({r.json()["checkout_url"] for r in responses}) == 1
        assert await state(ctx) == {"purchases": 1, "sessions": 0, "events": 0}
