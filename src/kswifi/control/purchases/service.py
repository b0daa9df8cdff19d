"""Business rules of buying a data session: providers, idempotency, fulfilment and vouchers.

A purchase and the session it buys are written in the request's one transaction, so a failure
anywhere leaves nothing behind. Every race is settled by the database, not by the process:
a voucher is spent by one conditional UPDATE, a pending purchase becomes paid by another, a
repeated `Idempotency-Key` collides on a unique index, and a replayed Stripe event collides on
the provider-event primary key, which is inserted before anything else is done for it.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.config import Settings
from kswifi.control.errors import Conflict, Forbidden, NotFound, TooManyRequests, Unprocessable
from kswifi.control.events import EventBus
from kswifi.control.gateways import desired as gateway_desired
from kswifi.control.models import Plan, ProviderEvent, Purchase, User, utcnow
from kswifi.control.plans import service as plans_service
from kswifi.control.purchases import receipts, repository, voucher_codes
from kswifi.control.purchases.providers import stripe_checkout
from kswifi.control.purchases.repository import PurchaseView
from kswifi.control.purchases.schemas import (
    MAX_VOUCHERS_PER_BATCH,
    PurchaseCreate,
    PurchaseOut,
    ReceiptOut,
    WebhookAck,
)
from kswifi.control.sessions import service as sessions_service
from kswifi.control.users.ratelimit import SlidingWindowLimiter
from kswifi.control.webhooks import service as webhooks
from kswifi.logs import get_logger

log = get_logger("kswifi.purchases")

STRIPE_PAID_EVENTS = frozenset(
    {"checkout.session.completed", "checkout.session.async_payment_succeeded"}
)
STRIPE_FAILED_EVENTS = frozenset(
    {"checkout.session.expired", "checkout.session.async_payment_failed"}
)
STRIPE_SETTLED = frozenset({"paid", "no_payment_required"})
# Events about a payment after it was made, and the operator webhook each becomes.
STRIPE_AFTER_PAYMENT_EVENTS = {
    "charge.refunded": "purchase.refunded",
    "charge.dispute.created": "purchase.disputed",
}

# Voucher codes are bearer value: an account may try only so many that do not work (unknown,
# used, another plan's) per minute, whether through the API or the web checkout.
VOUCHER_FAILURES_PER_MINUTE = 10
_voucher_failures = SlidingWindowLimiter(VOUCHER_FAILURES_PER_MINUTE)


class PurchaseNotFound(NotFound):
    code = "purchase_not_found"


class VoucherNotFound(NotFound):
    code = "voucher_not_found"


class VoucherUsed(Conflict):
    code = "voucher_used"


class VoucherPlanMismatch(Unprocessable):
    code = "voucher_plan_mismatch"


class DevPaymentsDisabled(Forbidden):
    code = "dev_payments_disabled"


class IdempotencyKeyReused(Unprocessable):
    code = "idempotency_key_reused"


@dataclass(frozen=True)
class PurchaseResult:
    purchase: PurchaseOut
    created: bool  # False: an Idempotency-Key replay answered with the original purchase


def to_out(view: PurchaseView) -> PurchaseOut:
    purchase = view.purchase
    return PurchaseOut(
        id=purchase.id,
        status=purchase.status,
        plan_code=view.plan_code,
        provider=purchase.provider,
        session_id=view.session_id,
        amount_cents=purchase.amount_cents,
        currency=purchase.currency,
        checkout_url=purchase.checkout_url if purchase.status == "pending" else None,
        created_at=purchase.created_at,
        paid_at=purchase.paid_at,
    )


async def buy(
    db: AsyncSession,
    settings: Settings,
    *,
    user: User,
    data: PurchaseCreate,
    idempotency_key: str | None = None,
    now: datetime | None = None,
    bus: EventBus | None = None,
) -> PurchaseResult:
    """Buy a plan with a voucher (paid at once), Stripe (pending until its webhook) or dev."""
    now = now or utcnow()
    if idempotency_key is not None:
        earlier = await repository.get_by_idempotency_key(db, user.id, idempotency_key)
        if earlier is not None:
            return await _replay(db, earlier, data)
    if data.payment_method == "voucher":
        wait = _voucher_failures.retry_after(user.id)
        if wait is not None:
            raise TooManyRequests(
                f"Too many voucher codes that did not work; try again in {wait} seconds", wait
            )
    try:
        plan, voucher_code = await _resolve(db, settings, data)
    except (VoucherNotFound, VoucherUsed, VoucherPlanMismatch):
        _voucher_failures.record(user.id)
        raise
    purchase = Purchase(
        user_id=user.id,
        plan_id=plan.id,
        provider=data.payment_method,
        status="pending",
        # Voucher: the prepaid value is recorded; dev: nothing was paid.
        amount_cents=0 if data.payment_method == "dev" else plan.price_cents,
        currency=plan.currency,
        idempotency_key=idempotency_key,
        created_at=now,
    )
    try:
        async with db.begin_nested():  # a concurrent request with the same key loses here
            repository.add(db, purchase)
    except IntegrityError:
        earlier = (
            await repository.get_by_idempotency_key(db, user.id, idempotency_key)
            if idempotency_key is not None
            else None
        )
        if earlier is None:
            raise
        return await _replay(db, earlier, data)

    session_id: str | None = None
    if data.payment_method == "voucher":
        assert voucher_code is not None
        spent = await repository.redeem_voucher(
            db, voucher_code, user_id=user.id, purchase_id=purchase.id, now=now
        )
        if not spent:  # someone else's redemption committed first
            raise VoucherUsed("This voucher has already been used")
        purchase.provider_ref = voucher_code
        session_id = await _pay_now(db, settings, purchase, plan, now, bus)
    elif data.payment_method == "dev" or purchase.amount_cents == 0:
        session_id = await _pay_now(db, settings, purchase, plan, now, bus)
    else:
        checkout = await stripe_checkout.create_checkout_session(
            settings, _checkout_request(settings, purchase, plan, user)
        )
        purchase.provider_ref = checkout.id
        purchase.checkout_url = checkout.url
        await db.flush()
    log.info(
        "purchase_created",
        purchase_id=purchase.id,
        user_id=user.id,
        plan=plan.code,
        provider=purchase.provider,
        status=purchase.status,
    )
    return PurchaseResult(to_out(PurchaseView(purchase, plan.code, session_id)), created=True)


async def _resolve(
    db: AsyncSession, settings: Settings, data: PurchaseCreate
) -> tuple[Plan, str | None]:
    """The plan being bought (and the voucher paying for it), or the reason it cannot be."""
    if data.payment_method == "voucher":
        if data.voucher_code is None:
            raise Unprocessable(
                "voucher_code: required when paying with a voucher", field="voucher_code"
            )
        code = voucher_codes.normalize(data.voucher_code)
        voucher = await repository.get_voucher(db, code) if code else None
        if voucher is None or code is None:
            raise VoucherNotFound("No voucher has this code. Check it and try again.")
        if voucher.redeemed_at is not None:
            raise VoucherUsed("This voucher has already been used")
        plan = await plans_service.get_by_id(db, voucher.plan_id)
        if data.plan_code is not None and data.plan_code != plan.code:
            raise VoucherPlanMismatch(
                f"This voucher is for the {plan.name} plan ({plan.code}), not {data.plan_code!r}",
                field="plan_code",
            )
        plans_service.ensure_on_sale(plan)
        return plan, code
    if data.voucher_code is not None:
        raise Unprocessable(
            "voucher_code: only used when payment_method is voucher", field="voucher_code"
        )
    if data.plan_code is None:
        raise Unprocessable("plan_code: required", field="plan_code")
    if data.payment_method == "dev" and not settings.dev_payments:
        raise DevPaymentsDisabled("Free test purchases are turned off on this service")
    plan = await plans_service.get_by_code(db, data.plan_code)
    plans_service.ensure_on_sale(plan)
    if data.payment_method == "stripe" and plan.price_cents > 0:
        stripe_checkout.ensure_configured(settings)
    return plan, None


async def _replay(db: AsyncSession, earlier: Purchase, data: PurchaseCreate) -> PurchaseResult:
    """The original answer for a repeated Idempotency-Key, if the request is the same one."""
    view = await repository.get_view(db, earlier.id)
    assert view is not None
    same = earlier.provider == data.payment_method and data.plan_code in (None, view.plan_code)
    if data.payment_method == "voucher":
        typed = voucher_codes.normalize(data.voucher_code or "")
        same = same and typed is not None and typed == earlier.provider_ref
    else:
        same = same and data.plan_code is not None and data.voucher_code is None
    if not same:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was already used for a different purchase",
            field="Idempotency-Key",
        )
    return PurchaseResult(to_out(view), created=False)


async def _pay_now(
    db: AsyncSession,
    settings: Settings,
    purchase: Purchase,
    plan: Plan,
    now: datetime,
    bus: EventBus | None,
) -> str:
    purchase.status = "paid"
    purchase.paid_at = now
    await db.flush()
    return await _new_session(db, settings, purchase, plan, now, bus)


async def _new_session(
    db: AsyncSession,
    settings: Settings,
    purchase: Purchase,
    plan: Plan,
    now: datetime,
    bus: EventBus | None,
) -> str:
    """The paid purchase's session; a person's devices waiting in the garden draw from it at
    once (their gateways are told)."""
    new = await sessions_service.create_for_purchase(
        db,
        user_id=purchase.user_id,
        purchase_id=purchase.id,
        plan=plan,
        activation_days=settings.activation_days,
        now=now,
    )
    await gateway_desired.bump_revision(db, new.gateway_ids, bus, [purchase.user_id])
    await receipts.send_receipt(db, settings, purchase, plan, now)
    return new.session.id


def _checkout_request(
    settings: Settings, purchase: Purchase, plan: Plan, user: User
) -> stripe_checkout.CheckoutRequest:
    base = settings.public_url.rstrip("/")
    data = plans_service.data_text(plan.data_limit_bytes)
    return stripe_checkout.CheckoutRequest(
        purchase_id=purchase.id,
        user_id=user.id,
        customer_email=user.email,
        plan_code=plan.code,
        product_name=f"KSWiFi Connect {plan.name}",
        product_description=(
            f"{data} of Secure Internet Access at {plan.speed_mbps} Mbps, "
            f"valid {plan.validity_days} days from first use"
        ),
        amount_cents=purchase.amount_cents,
        currency=purchase.currency,
        # Pages of the web app: the buyer's sessions, or back to this plan's checkout.
        success_url=f"{base}/sessions?checkout=success&purchase={purchase.id}",
        cancel_url=f"{base}/checkout/{plan.code}?checkout=cancelled",
    )


async def handle_stripe_webhook(
    db: AsyncSession,
    settings: Settings,
    *,
    payload: bytes,
    signature: str | None,
    now: datetime | None = None,
    bus: EventBus | None = None,
) -> WebhookAck:
    """Fulfil from a verified Stripe event; an event seen before changes nothing."""
    now = now or utcnow()
    event = stripe_checkout.verify_event(settings, payload, signature)
    event_id, kind = str(event["id"]), str(event["type"])
    try:
        # Inserted first: a concurrent replay blocks on this key, then finds it taken.
        async with db.begin_nested():
            repository.add(
                db, ProviderEvent(id=event_id, provider="stripe", kind=kind[:64], processed_at=now)
            )
    except IntegrityError:
        log.info("stripe_event_replayed", event_id=event_id, kind=kind)
        return WebhookAck(duplicate=True)
    data = event.get("data")
    checkout = data.get("object") if isinstance(data, dict) else None
    if isinstance(checkout, dict) and kind in STRIPE_AFTER_PAYMENT_EVENTS:
        await _after_payment(db, checkout, STRIPE_AFTER_PAYMENT_EVENTS[kind], event_id, now)
        return WebhookAck()
    if not isinstance(checkout, dict) or checkout.get("object") != "checkout.session":
        log.info("stripe_event_ignored", event_id=event_id, kind=kind)
        return WebhookAck()
    purchase = await _checkout_purchase(db, checkout)
    if purchase is None:
        log.warning("stripe_checkout_unknown", event_id=event_id, checkout_id=checkout.get("id"))
        return WebhookAck()
    if kind in STRIPE_PAID_EVENTS and checkout.get("payment_status") in STRIPE_SETTLED:
        await _fulfil_checkout(db, settings, purchase, checkout, event_id, now, bus)
    elif kind in STRIPE_FAILED_EVENTS and await repository.mark_failed(db, purchase.id):
        log.info("purchase_failed", purchase_id=purchase.id, event_id=event_id, kind=kind)
        webhooks.record(db, "payment.failed", _purchase_facts(purchase, kind=kind), now=now)
    return WebhookAck()


def _purchase_facts(purchase: Purchase, **extra: object) -> dict[str, object]:
    return {
        "purchase_id": purchase.id,
        "user_id": purchase.user_id,
        "provider": purchase.provider,
        "amount_cents": purchase.amount_cents,
        "currency": purchase.currency,
        **extra,
    }


async def _after_payment(
    db: AsyncSession, stripe_object: dict[str, Any], event_type: str, event_id: str, now: datetime
) -> None:
    """A refund or dispute of a paid purchase (found by its PaymentIntent): operators hear of
    it by webhook. (What it does to the session is the refund policy's business.)"""
    intent = stripe_object.get("payment_intent")
    purchase = (
        await repository.get_by_payment_ref(db, "stripe", intent)
        if isinstance(intent, str)
        else None
    )
    if purchase is None:
        log.warning("stripe_payment_unknown", event_id=event_id, payment_intent=intent)
        return
    amount = stripe_object.get("amount_refunded", stripe_object.get("amount"))
    facts = _purchase_facts(
        purchase,
        stripe_event_id=event_id,
        stripe_amount=amount if isinstance(amount, int) else None,
        stripe_reason=stripe_object.get("reason"),
    )
    webhooks.record(db, event_type, facts, now=now)
    log.info(event_type.replace(".", "_"), purchase_id=purchase.id, event_id=event_id)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


async def _checkout_purchase(db: AsyncSession, checkout: dict[str, Any]) -> Purchase | None:
    checkout_id = checkout.get("id")
    if not isinstance(checkout_id, str):
        return None
    return await repository.get_by_provider_ref(db, "stripe", checkout_id)


async def _fulfil_checkout(
    db: AsyncSession,
    settings: Settings,
    purchase: Purchase,
    checkout: dict[str, Any],
    event_id: str,
    now: datetime,
    bus: EventBus | None,
) -> None:
    amount, currency = checkout.get("amount_total"), str(checkout.get("currency") or "")
    if amount != purchase.amount_cents or currency.upper() != purchase.currency:
        log.error(
            "stripe_amount_mismatch",
            purchase_id=purchase.id,
            event_id=event_id,
            expected=f"{purchase.amount_cents} {purchase.currency}",
            received=f"{amount} {currency}",
        )
        return
    if not await repository.mark_paid(
        db, purchase.id, now, payment_ref=_text(checkout.get("payment_intent"))
    ):
        log.info("purchase_already_settled", purchase_id=purchase.id, event_id=event_id)
        return
    plan = await plans_service.get_by_id(db, purchase.plan_id)
    session_id = await _new_session(db, settings, purchase, plan, now, bus)
    log.info(
        "purchase_paid",
        purchase_id=purchase.id,
        session_id=session_id,
        event_id=event_id,
        provider="stripe",
    )


async def list_for_user(db: AsyncSession, user_id: str) -> list[PurchaseOut]:
    """The user's own purchases, newest first."""
    return [to_out(view) for view in await repository.list_views_for_user(db, user_id)]


async def get_for_user(db: AsyncSession, user_id: str, purchase_id: str) -> PurchaseOut:
    """The user's own purchase; someone else's answers exactly like a missing one."""
    view = await repository.get_view(db, purchase_id)
    if view is None or view.purchase.user_id != user_id:
        raise PurchaseNotFound("No such purchase")
    return to_out(view)


async def receipt_out(db: AsyncSession, user_id: str, purchase_id: str) -> ReceiptOut:
    """The caller's own paid purchase's receipt; anything else answers like a missing one."""
    receipt = await receipts.receipt_for_user(db, user_id, purchase_id)
    if receipt is None:
        raise PurchaseNotFound("No receipt for that purchase")
    return ReceiptOut(
        purchase_id=receipt.purchase_id,
        reference=receipt.reference,
        plan_name=receipt.plan_name,
        data=receipt.data,
        speed_mbps=receipt.speed_mbps,
        validity_days=receipt.validity_days,
        max_devices=receipt.max_devices,
        price=receipt.price,
        amount_cents=receipt.amount_cents,
        currency=receipt.currency,
        paid_at=receipt.paid_at,
        payment_method=receipt.method,
        payment_reference=receipt.provider_reference,
    )


async def create_vouchers(
    db: AsyncSession,
    *,
    plan_code: str,
    count: int,
    actor: str,
    now: datetime | None = None,
) -> list[str]:
    """`count` new single-use codes for a plan on sale, in the order they were made."""
    if not 1 <= count <= MAX_VOUCHERS_PER_BATCH:
        raise Unprocessable(
            f"count: between 1 and {MAX_VOUCHERS_PER_BATCH}, not {count}", field="count"
        )
    now = now or utcnow()
    plan = await plans_service.get_by_code(db, plan_code)
    plans_service.ensure_on_sale(plan)
    codes: dict[str, None] = {}
    while len(codes) < count:
        codes[voucher_codes.new_code()] = None
    await repository.add_vouchers(
        db,
        [
            {"code": code, "plan_id": plan.id, "created_at": now, "created_by": actor}
            for code in codes
        ],
    )
    repository.add_audit(
        db,
        actor=actor,
        action="voucher.create",
        target=f"plan:{plan.code}",
        detail=json.dumps({"count": count}),
    )
    log.info("vouchers_created", plan=plan.code, count=count, actor=actor)
    return list(codes)


VOUCHER_CSV_COLUMNS = (
    "code",
    "plan_code",
    "status",
    "created_at",
    "created_by",
    "redeemed_at",
    "redeemed_by",
    "purchase_id",
)


async def export_vouchers_csv(db: AsyncSession, *, actor: str, plan_code: str | None = None) -> str:
    """Every voucher (of one plan, if given) as CSV, oldest first; the export is audited."""
    plan_id = None if plan_code is None else (await plans_service.get_by_code(db, plan_code)).id
    rows = await repository.list_vouchers(db, plan_id)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(VOUCHER_CSV_COLUMNS)
    for row in rows:
        writer.writerow(
            (
                row.code,
                row.plan_code,
                "redeemed" if row.redeemed_at else "unused",
                row.created_at.isoformat(timespec="seconds"),
                row.created_by or "",
                row.redeemed_at.isoformat(timespec="seconds") if row.redeemed_at else "",
                row.redeemed_by_email or "",
                row.purchase_id or "",
            )
        )
    repository.add_audit(
        db,
        actor=actor,
        action="voucher.export",
        target=f"plan:{plan_code}" if plan_code else "vouchers",
        detail=json.dumps({"rows": len(rows)}),
    )
    return buffer.getvalue()
