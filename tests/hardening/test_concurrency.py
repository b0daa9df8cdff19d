"""Races at the scale of the issue: 500 purchases with one Idempotency-Key, one voucher from 50
clients at once. (tests/control/purchases/test_concurrency.py runs the same races with 30.)

Each test prints one line with its numbers (`-s` shows them; docs/RELIABILITY.md quotes them).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

from kswifi.control.deps import AppContext
from kswifi.control.models import DataSession, Purchase, Voucher
from kswifi.control.purchases import service as purchases_service
from tests.hardening.conftest import client_for, make_actor

SAME_KEY_REQUESTS = 500
VOUCHER_CLIENTS = 50


async def _counts(ctx: AppContext) -> tuple[int, int]:
    async with ctx.db.transaction() as db:
        purchases = await db.scalar(select(func.count()).select_from(Purchase))
        sessions = await db.scalar(select(func.count()).select_from(DataSession))
        return int(purchases or 0), int(sessions or 0)


async def test_500_parallel_purchases_with_one_idempotency_key_make_one_session(
    client: httpx.AsyncClient, ctx: AppContext, database_url: str
) -> None:
    buyer = await make_actor(ctx, label="clicker")
    headers = {**buyer.headers, "Idempotency-Key": "one-tap-500"}
    body = {"plan_code": "premium", "payment_method": "dev"}
    started = time.monotonic()
    responses = await asyncio.gather(
        *(
            client.post("/api/purchases", json=body, headers=headers)
            for _ in range(SAME_KEY_REQUESTS)
        )
    )
    elapsed = time.monotonic() - started
    statuses = Counter(response.status_code for response in responses)
    assert statuses == {201: 1, 200: SAME_KEY_REQUESTS - 1}, statuses
    assert len({response.json()["id"] for response in responses}) == 1
    assert len({response.json()["session_id"] for response in responses}) == 1
    assert await _counts(ctx) == (1, 1)
    print(
        f"\n[reliability] idempotency {database_url.split(':')[0]}: {SAME_KEY_REQUESTS} requests,"
        f" {dict(statuses)}, 1 purchase, 1 session, {elapsed:.1f} s"
    )


async def test_one_voucher_from_50_clients_at_once_makes_one_session(
    app: FastAPI, ctx: AppContext, database_url: str
) -> None:
    async with ctx.db.transaction() as db:
        [code] = await purchases_service.create_vouchers(
            db, plan_code="ultra", count=1, actor="tests"
        )
    buyers = [await make_actor(ctx, label=f"rush{n}") for n in range(VOUCHER_CLIENTS)]
    clients = [client_for(app, f"203.0.113.{n + 1}") for n in range(VOUCHER_CLIENTS)]
    body = {"payment_method": "voucher", "voucher_code": code}
    try:
        started = time.monotonic()
        responses = await asyncio.gather(
            *(
                http.post("/api/purchases", json=body, headers=buyer.headers)
                for http, buyer in zip(clients, buyers, strict=True)
            )
        )
        elapsed = time.monotonic() - started
    finally:
        for http in clients:
            await http.aclose()
    statuses = Counter(response.status_code for response in responses)
    assert statuses == {201: 1, 409: VOUCHER_CLIENTS - 1}, statuses
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {
        "voucher_used"
    }
    [winner] = [buyer for buyer, r in zip(buyers, responses, strict=True) if r.status_code == 201]
    assert await _counts(ctx) == (1, 1)
    async with ctx.db.transaction() as db:
        voucher = await db.scalar(select(Voucher))
        assert voucher is not None and voucher.redeemed_by == winner.id
        session = await db.scalar(select(DataSession))
        assert session is not None and session.user_id == winner.id
    print(
        f"\n[reliability] voucher {database_url.split(':')[0]}: {VOUCHER_CLIENTS} clients,"
        f" {dict(statuses)}, 1 purchase, 1 session, {elapsed:.1f} s"
    )
