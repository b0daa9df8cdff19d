"""HTTP endpoints of the purchases domain: buying, the Stripe webhook, and voucher admin."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response

from kswifi.control.deps import AdminUser, Ctx, CurrentUser, DbSession
from kswifi.control.purchases import refunds, service
from kswifi.control.purchases.schemas import (
    PurchaseCreate,
    PurchaseList,
    PurchaseOut,
    ReceiptOut,
    RefundIn,
    RefundOut,
    VoucherBatch,
    VoucherCreate,
    WebhookAck,
)

router = APIRouter(tags=["purchases"])
stripe_router = APIRouter(tags=["webhooks"])
"""Served only when Stripe's webhook secret is set (see `kswifi.control.api`)."""

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
        description="Repeat a purchase safely: the same key returns the original purchase",
    ),
]
PurchaseId = Annotated[str, Path(max_length=32)]


@router.post(
    "/purchases",
    status_code=201,
    response_model=PurchaseOut,
    responses={200: {"model": PurchaseOut, "description": "Idempotency-Key replay"}},
)
async def create_purchase(
    body: PurchaseCreate,
    response: Response,
    db: DbSession,
    ctx: Ctx,
    user: CurrentUser,
    idempotency_key: IdempotencyKey = None,
) -> PurchaseOut:
    """Buy a plan: 201 paid (voucher, dev) or pending with a `checkout_url` (stripe)."""
    result = await service.buy(
        db, ctx.settings, user=user, data=body, idempotency_key=idempotency_key, bus=ctx.events
    )
    response.status_code = 201 if result.created else 200
    return result.purchase


@router.get("/purchases", response_model=PurchaseList)
async def list_purchases(db: DbSession, user: CurrentUser) -> PurchaseList:
    return PurchaseList(purchases=await service.list_for_user(db, user.id))


@router.get("/purchases/{purchase_id}", response_model=PurchaseOut)
async def get_purchase(purchase_id: PurchaseId, db: DbSession, user: CurrentUser) -> PurchaseOut:
    return await service.get_for_user(db, user.id, purchase_id)


@router.get("/purchases/{purchase_id}/receipt", response_model=ReceiptOut)
async def get_receipt(purchase_id: PurchaseId, db: DbSession, user: CurrentUser) -> ReceiptOut:
    """The receipt of the caller's own paid purchase (404 for anything else)."""
    return await service.receipt_out(db, user.id, purchase_id)


@stripe_router.post("/purchases/stripe/webhook", response_model=WebhookAck)
async def stripe_webhook(
    request: Request,
    db: DbSession,
    ctx: Ctx,
    stripe_signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None,
) -> WebhookAck:
    """Stripe's events; only a body whose signature verifies is acted on (else 400)."""
    payload = await request.body()
    return await service.handle_stripe_webhook(
        db, ctx.settings, payload=payload, signature=stripe_signature, bus=ctx.events
    )


@router.post("/admin/vouchers", status_code=201, response_model=VoucherBatch, tags=["admin"])
async def admin_create_vouchers(
    body: VoucherCreate, db: DbSession, admin: AdminUser
) -> VoucherBatch:
    codes = await service.create_vouchers(
        db, plan_code=body.plan_code, count=body.count, actor=admin.email
    )
    return VoucherBatch(plan_code=body.plan_code, count=len(codes), codes=codes)


@router.post("/admin/purchases/{purchase_id}/refund", response_model=RefundOut, tags=["admin"])
async def admin_refund(
    purchase_id: PurchaseId, admin: AdminUser, ctx: Ctx, db: DbSession, body: RefundIn | None = None
) -> RefundOut:
    """Refund a paid purchase (409 otherwise): card payments through Stripe, a voucher voided
    or re-issued; its session ends and its devices move on."""
    done = await refunds.refund(
        db,
        ctx.settings,
        ctx.events,
        purchase_id=purchase_id,
        actor=admin.email,
        voucher=body.voucher if body else "void",
    )
    return RefundOut(
        purchase_id=done.purchase_id,
        within_policy=done.within_policy,
        provider_refund_id=done.provider_refund_id,
        reissued_voucher=done.reissued_voucher,
    )


@router.get("/admin/vouchers.csv", tags=["admin"], response_class=Response)
async def admin_export_vouchers(
    db: DbSession,
    admin: AdminUser,
    plan: Annotated[str | None, Query(max_length=32, description="Only this plan's")] = None,
) -> Response:
    """Every voucher as CSV: code, plan, status, who redeemed it and when."""
    text = await service.export_vouchers_csv(db, actor=admin.email, plan_code=plan)
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="kswifi-vouchers.csv"'},
    )
