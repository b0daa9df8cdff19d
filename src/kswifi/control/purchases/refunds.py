"""Refunds an operator makes.

The policy people are shown at checkout: a session never used can be refunded within
`KSWIFI_REFUND_UNUSED_DAYS` days of purchase. An operator may refund any paid purchase (the
answer says whether it was within that policy): card payments are refunded through Stripe (one
refund per purchase, whatever retries happen), a voucher is voided or re-issued as a new code,
a demo purchase just ends. The purchase becomes `refunded`, its session ends (`revoked`,
reason `refunded`) and the person's devices move on to their next session or the garden.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.config import Settings
from kswifi.control.errors import Conflict, NotFound, Unprocessable
from kswifi.control.events import EventBus
from kswifi.control.gateways import desired as gateway_desired
from kswifi.control.models import USABLE_STATES, Purchase, SessionStatus, utcnow
from kswifi.control.plans import service as plans
from kswifi.control.purchases import repository, voucher_codes
from kswifi.control.purchases.providers import stripe_checkout
from kswifi.control.sessions import service as sessions
from kswifi.control.webhooks import service as webhooks
from kswifi.logs import get_logger

log = get_logger("kswifi.control.purchases")

VOUCHER_ACTIONS = ("void", "reissue")


class NotRefundable(Conflict):
    code = "not_refundable"


def policy_text(settings: Settings) -> str:
    """The refund policy as checkout states it."""
    days = settings.refund_unused_days
    if days == 0:
        return "Purchases are not refundable."
    return (
        f"A session you have not used can be refunded within {days} day"
        f"{'s' if days != 1 else ''} of purchase: write to us with your receipt reference."
    )


def within_policy(settings: Settings, paid_at: datetime, used_bytes: int, now: datetime) -> bool:
    days = settings.refund_unused_days
    return days > 0 and used_bytes == 0 and now - paid_at <= timedelta(days=days)


@dataclass(frozen=True)
class Refunded:
    purchase_id: str
    within_policy: bool
    provider_refund_id: str | None
    reissued_voucher: str | None


async def refund(
    db: AsyncSession,
    settings: Settings,
    bus: EventBus,
    *,
    purchase_id: str,
    actor: str,
    voucher: str = "void",
    now: datetime | None = None,
) -> Refunded:
    now = now or utcnow()
    if voucher not in VOUCHER_ACTIONS:
        raise Unprocessable("voucher: `void` or `reissue`", field="voucher")
    purchase = await repository.get_for_update(db, purchase_id)
    if purchase is None:
        raise NotFound("No such purchase")
    if purchase.status != "paid" or purchase.paid_at is None:
        raise NotRefundable(f"Only a paid purchase can be refunded (this one is {purchase.status})")
    session = await sessions.of_purchase(db, purchase.id)
    used = session.used_bytes if session is not None else 0
    allowed = within_policy(settings, purchase.paid_at, used, now)
    refund_id = await _give_back(settings, purchase)
    reissued = await _voucher(db, purchase, voucher, actor, now)
    purchase.status = "refunded"
    if session is not None and session.status in USABLE_STATES:
        moved = await sessions.end(db, bus, session, SessionStatus.REVOKED, "refunded", now)
        await gateway_desired.bump_revision(db, moved, bus, [session.user_id])
    webhooks.record(
        db,
        "purchase.refunded",
        {
            "purchase_id": purchase.id,
            "user_id": purchase.user_id,
            "provider": purchase.provider,
            "amount_cents": purchase.amount_cents,
            "currency": purchase.currency,
            "source": "operator",
            "within_policy": allowed,
        },
        now=now,
    )
    repository.add_audit(
        db,
        actor=actor,
        action="purchase.refund",
        target=f"purchase:{purchase.id}",
        detail=f'{{"voucher": "{voucher}", "within_policy": {str(allowed).lower()}}}',
    )
    await db.flush()
    log.info("purchase_refunded", purchase_id=purchase.id, actor=actor, within_policy=allowed)
    return Refunded(purchase.id, allowed, refund_id, reissued)


async def _give_back(settings: Settings, purchase: Purchase) -> str | None:
    if purchase.provider != "stripe" or purchase.amount_cents == 0:
        return None
    if not purchase.payment_ref:
        raise NotRefundable("Stripe never told us this payment's reference: refund it there")
    return await stripe_checkout.refund_payment(settings, purchase.payment_ref, purchase.id)


async def _voucher(
    db: AsyncSession, purchase: Purchase, action: str, actor: str, now: datetime
) -> str | None:
    """A redeemed voucher stays spent (void); `reissue` gives a new code for the same plan."""
    if purchase.provider != "voucher" or action != "reissue":
        return None
    plan = await plans.get_by_id(db, purchase.plan_id)
    code = voucher_codes.new_code()
    await repository.add_vouchers(
        db, [{"code": code, "plan_id": plan.id, "created_at": now, "created_by": actor}]
    )
    return code
