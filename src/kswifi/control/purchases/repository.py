"""Queries of the purchases domain: purchases, vouchers, provider events and audit entries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.audit import add_audit as add_audit  # the domain's audit writer
from kswifi.control.models import (
    AuditEntry,
    DataSession,
    Plan,
    ProviderEvent,
    Purchase,
    User,
    Voucher,
)


@dataclass(frozen=True)
class PurchaseView:
    purchase: Purchase
    plan_code: str
    session_id: str | None


@dataclass(frozen=True)
class VoucherRow:
    code: str
    plan_code: str
    created_at: datetime
    created_by: str | None
    redeemed_at: datetime | None
    redeemed_by_email: str | None
    purchase_id: str | None


async def _views(
    db: AsyncSession, *conditions: ColumnElement[bool], newest_first: bool = False
) -> list[PurchaseView]:
    """Purchases with their plan's code and the session they bought (if paid)."""
    query = (
        select(Purchase, Plan.code, DataSession.id)
        .join(Plan, Plan.id == Purchase.plan_id)
        .outerjoin(DataSession, DataSession.purchase_id == Purchase.id)
        .where(*conditions)
    )
    if newest_first:
        query = query.order_by(Purchase.created_at.desc(), Purchase.id.desc())
    return [
        PurchaseView(purchase, plan_code, session_id)
        for purchase, plan_code, session_id in await db.execute(query)
    ]


async def get_view(db: AsyncSession, purchase_id: str) -> PurchaseView | None:
    views = await _views(db, Purchase.id == purchase_id)
    return views[0] if views else None


async def list_views_for_user(db: AsyncSession, user_id: str) -> list[PurchaseView]:
    return await _views(db, Purchase.user_id == user_id, newest_first=True)


async def get_by_idempotency_key(db: AsyncSession, user_id: str, key: str) -> Purchase | None:
    result: Purchase | None = await db.scalar(
        select(Purchase).where(Purchase.user_id == user_id, Purchase.idempotency_key == key)
    )
    return result


async def get_by_payment_ref(db: AsyncSession, provider: str, ref: str) -> Purchase | None:
    result: Purchase | None = await db.scalar(
        select(Purchase).where(Purchase.provider == provider, Purchase.payment_ref == ref)
    )
    return result


async def get_by_provider_ref(db: AsyncSession, provider: str, ref: str) -> Purchase | None:
    result: Purchase | None = await db.scalar(
        select(Purchase).where(Purchase.provider == provider, Purchase.provider_ref == ref)
    )
    return result


async def get_for_update(db: AsyncSession, purchase_id: str) -> Purchase | None:
    """The purchase, locked to the end of the transaction (two refunds never race)."""
    return await db.scalar(
        select(Purchase)
        .where(Purchase.id == purchase_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def get(db: AsyncSession, purchase_id: str) -> Purchase | None:
    return await db.get(Purchase, purchase_id)


def add(db: AsyncSession, row: Purchase | ProviderEvent | AuditEntry) -> None:
    db.add(row)


async def mark_paid(
    db: AsyncSession, purchase_id: str, now: datetime, *, payment_ref: str | None = None
) -> bool:
    """Pending → paid in one conditional UPDATE: of two racing fulfilments, one wins."""
    result = await db.execute(
        update(Purchase)
        .where(Purchase.id == purchase_id, Purchase.status == "pending")
        .values(status="paid", paid_at=now, payment_ref=payment_ref)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


async def mark_failed(db: AsyncSession, purchase_id: str) -> bool:
    result = await db.execute(
        update(Purchase)
        .where(Purchase.id == purchase_id, Purchase.status == "pending")
        .values(status="failed")
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


async def get_voucher(db: AsyncSession, code: str) -> Voucher | None:
    return await db.get(Voucher, code)


async def redeem_voucher(
    db: AsyncSession, code: str, *, user_id: str, purchase_id: str, now: datetime
) -> bool:
    """Spend a voucher: one conditional UPDATE, so of N concurrent redemptions exactly one wins."""
    result = await db.execute(
        update(Voucher)
        .where(Voucher.code == code, Voucher.redeemed_at.is_(None))
        .values(redeemed_at=now, redeemed_by=user_id, purchase_id=purchase_id)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


async def add_vouchers(db: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await db.execute(insert(Voucher), list(rows))


async def list_vouchers(db: AsyncSession, plan_id: str | None = None) -> list[VoucherRow]:
    query = (
        select(Voucher, Plan.code, User.email)
        .join(Plan, Plan.id == Voucher.plan_id)
        .outerjoin(User, User.id == Voucher.redeemed_by)
        .order_by(Voucher.created_at, Voucher.code)
    )
    if plan_id is not None:
        query = query.where(Voucher.plan_id == plan_id)
    return [
        VoucherRow(
            code=voucher.code,
            plan_code=plan_code,
            created_at=voucher.created_at,
            created_by=voucher.created_by,
            redeemed_at=voucher.redeemed_at,
            redeemed_by_email=email,
            purchase_id=voucher.purchase_id,
        )
        for voucher, plan_code, email in await db.execute(query)
    ]


def _rowcount(result: Any) -> int:
    return cast(CursorResult[Any], result).rowcount
