"""Buying with a voucher or the dev provider, and the rules every provider shares."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from kswifi.control.deps import AppContext
from kswifi.control.errors import Conflict
from kswifi.control.models import AuditEntry, Plan
from kswifi.control.plans.service import GIB
from kswifi.control.purchases import service
from tests.control.plans.accounts import Account
from tests.control.purchases.conftest import MakeAccount, MakeVouchers
from tests.control.purchases.db_state import session_of, state, voucher


async def _buy(client: httpx.AsyncClient, account: Account, **body: object) -> httpx.Response:
    return await client.post("/api/purchases", json=body, headers=account.headers)


async def _withdraw(ctx: AppContext, code: str) -> None:
    async with ctx.db.transaction() as db:
        plan = await db.scalar(select(Plan).where(Plan.code == code))
        assert plan is not None
        plan.is_active = False


class TestVoucher:
    async def test_redeeming_gives_a_paid_purchase_and_a_session(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        buyer: Account,
        make_vouchers: MakeVouchers,
    ) -> None:
        [code] = await make_vouchers("premium")
        response = await _buy(client, buyer, payment_method="voucher", voucher_code=code)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["status"] == "paid"
        assert body["plan_code"] == "premium"
        assert body["provider"] == "voucher"
        assert body["amount_cents"] == 1499
        assert body["currency"] == "USD"
        assert body["checkout_url"] is None
        assert body["paid_at"] is not None
        session = await session_of(ctx, body["id"])
        assert session is not None
        assert body["session_id"] == session.id
        assert (session.user_id, session.status) == (buyer.id, "active")
        assert (session.data_limit_bytes, session.speed_mbps) == (5 * GIB, 25)
        spent = await voucher(ctx, code)
        assert spent.redeemed_at is not None
        assert (spent.redeemed_by, spent.purchase_id) == (buyer.id, body["id"])

    async def test_plan_code_may_be_given_if_it_matches(
        self, client: httpx.AsyncClient, buyer: Account, make_vouchers: MakeVouchers
    ) -> None:
        [code] = await make_vouchers("ultra")
        response = await _buy(
            client, buyer, payment_method="voucher", voucher_code=code, plan_code="ultra"
        )
        assert response.status_code == 201
        assert response.json()["plan_code"] == "ultra"

    async def test_a_code_typed_by_hand_is_understood(
        self, client: httpx.AsyncClient, buyer: Account, make_vouchers: MakeVouchers
    ) -> None:
        [code] = await make_vouchers("basic")
        typed = " " + code.lower().replace("-", " ") + " "
        response = await _buy(client, buyer, payment_method="voucher", voucher_code=typed)
        assert response.status_code == 201, response.text

    async def test_second_redemption_is_409_voucher_used(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        buyer: Account,
        make_account: MakeAccount,
        make_vouchers: MakeVouchers,
    ) -> None:
        [code] = await make_vouchers("basic")
        assert (await _buy(client, buyer, payment_method="voucher", voucher_code=code)).is_success
        other = await make_account()
        for account in (buyer, other):
            again = await _buy(client, account, payment_method="voucher", voucher_code=code)
            assert again.status_code == 409
            assert again.json()["error"]["code"] == "voucher_used"
        assert await state(ctx) == {"purchases": 1, "sessions": 1, "events": 0}

    @pytest.mark.parametrize("code", ["KSW-0000-0000-0000-0000", "not a code", "KSW-!!!!"])
    async def test_unknown_code_is_404(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account, code: str
    ) -> None:
        response = await _buy(client, buyer, payment_method="voucher", voucher_code=code)
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["code"] == "voucher_not_found"
        assert "voucher" in error["message"].lower()
        assert await state(ctx) == {"purchases": 0, "sessions": 0, "events": 0}

    async def test_another_plan_code_is_422(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        buyer: Account,
        make_vouchers: MakeVouchers,
    ) -> None:
        [code] = await make_vouchers("basic")
        response = await _buy(
            client, buyer, payment_method="voucher", voucher_code=code, plan_code="ultra"
        )
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "voucher_plan_mismatch"
        assert (await voucher(ctx, code)).redeemed_at is None

    async def test_missing_code_is_422(self, client: httpx.AsyncClient, buyer: Account) -> None:
        response = await _buy(client, buyer, payment_method="voucher", plan_code="basic")
        assert response.status_code == 422
        assert "voucher_code" in response.json()["error"]["message"]


class TestDev:
    async def test_dev_purchase_is_instant_and_free(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account
    ) -> None:
        response = await _buy(client, buyer, payment_method="dev", plan_code="ultra")
        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["status"], body["provider"], body["amount_cents"]) == ("paid", "dev", 0)
        session = await session_of(ctx, body["id"])
        assert session is not None
        assert session.id == body["session_id"]
        assert (session.max_devices, session.speed_mbps) == (3, 50)

    async def test_refused_unless_the_operator_enabled_it(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account
    ) -> None:
        ctx.settings.dev_payments = False
        response = await _buy(client, buyer, payment_method="dev", plan_code="basic")
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "dev_payments_disabled"
        assert await state(ctx) == {"purchases": 0, "sessions": 0, "events": 0}


class TestEveryProvider:
    async def test_unknown_plan_is_404(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account
    ) -> None:
        for method in ("dev", "stripe"):
            response = await _buy(client, buyer, payment_method=method, plan_code="gold")
            assert response.status_code == 404, method
            assert response.json()["error"]["code"] == "plan_not_found"
        assert await state(ctx) == {"purchases": 0, "sessions": 0, "events": 0}

    async def test_withdrawn_plan_is_409(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        buyer: Account,
        make_vouchers: MakeVouchers,
    ) -> None:
        [code] = await make_vouchers("basic")
        await _withdraw(ctx, "basic")
        attempts = [
            {"payment_method": "dev", "plan_code": "basic"},
            {"payment_method": "stripe", "plan_code": "basic"},
            {"payment_method": "voucher", "voucher_code": code},
        ]
        for body in attempts:
            response = await _buy(client, buyer, **body)
            assert response.status_code == 409, body
            assert response.json()["error"]["code"] == "plan_inactive"
        assert await state(ctx) == {"purchases": 0, "sessions": 0, "events": 0}
        assert (await voucher(ctx, code)).redeemed_at is None

    @pytest.mark.parametrize(
        "body",
        [
            {"plan_code": "basic"},
            {"plan_code": "basic", "payment_method": "paypal"},
            {"plan_code": "basic", "payment_method": "dev", "coupon": "x"},
            {"payment_method": "dev"},
            {"plan_code": "basic", "payment_method": "dev", "voucher_code": "KSW-AAAA"},
            {"plan_code": 7, "payment_method": "dev"},
        ],
    )
    async def test_bad_bodies_are_422(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account, body: dict[str, object]
    ) -> None:
        response = await client.post("/api/purchases", json=body, headers=buyer.headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"
        assert await state(ctx) == {"purchases": 0, "sessions": 0, "events": 0}

    async def test_needs_login(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/api/purchases", json={"plan_code": "basic", "payment_method": "dev"}
        )
        assert response.status_code == 401

    async def test_a_failure_after_payment_leaves_nothing_half_written(
        self,
        client: httpx.AsyncClient,
        ctx: AppContext,
        buyer: Account,
        make_vouchers: MakeVouchers,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        async def broken(*_args: object, **_kwargs: object) -> None:
            raise Conflict("the session could not be created")

        monkeypatch.setattr(service.sessions_service, "create_for_purchase", broken)
        [code] = await make_vouchers("basic")
        response = await _buy(client, buyer, payment_method="voucher", voucher_code=code)
        assert response.status_code == 409
        assert await state(ctx) == {"purchases": 0, "sessions": 0, "events": 0}
        assert (await voucher(ctx, code)).redeemed_at is None
        response = await _buy(client, buyer, payment_method="dev", plan_code="basic")
        assert response.status_code == 409
        assert await state(ctx) == {"purchases": 0, "sessions": 0, "events": 0}


class TestReading:
    async def test_own_purchases_newest_first_and_others_are_404(
        self, client: httpx.AsyncClient, buyer: Account, make_account: MakeAccount
    ) -> None:
        first = (await _buy(client, buyer, payment_method="dev", plan_code="basic")).json()
        second = (await _buy(client, buyer, payment_method="dev", plan_code="ultra")).json()
        other = await make_account()
        theirs = (await _buy(client, other, payment_method="dev", plan_code="premium")).json()

        listed = await client.get("/api/purchases", headers=buyer.headers)
        assert listed.status_code == 200
        assert [p["id"] for p in listed.json()["purchases"]] == [second["id"], first["id"]]

        mine = await client.get(f"/api/purchases/{first['id']}", headers=buyer.headers)
        assert mine.status_code == 200
        assert mine.json() == first

        hidden = await client.get(f"/api/purchases/{theirs['id']}", headers=buyer.headers)
        missing = await client.get(f"/api/purchases/{'0' * 32}", headers=buyer.headers)
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json() == missing.json()
        assert (await client.get("/api/purchases")).status_code == 401

    async def test_sold_session_keeps_its_limits_when_the_plan_is_edited(
        self, client: httpx.AsyncClient, ctx: AppContext, buyer: Account, admin: Account
    ) -> None:
        bought = (await _buy(client, buyer, payment_method="dev", plan_code="premium")).json()
        edited = await client.patch(
            "/api/admin/plans/premium",
            json={"data_limit_mb": 100, "speed_mbps": 1, "validity_days": 1},
            headers=admin.headers,
        )
        assert edited.status_code == 200
        session = await session_of(ctx, bought["id"])
        assert session is not None
        assert (session.data_limit_bytes, session.speed_mbps) == (5 * GIB, 25)
        assert session.validity_seconds == 30 * 86_400
        newer = (await _buy(client, buyer, payment_method="dev", plan_code="premium")).json()
        newer_session = await session_of(ctx, newer["id"])
        assert newer_session is not None
        assert (newer_session.data_limit_bytes, newer_session.speed_mbps) == (100 * 1024**2, 1)
        async with ctx.db.transaction() as db:
            actions = list(await db.scalars(select(AuditEntry.action)))
        assert actions == ["plan.update"]
