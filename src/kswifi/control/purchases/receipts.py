"""Receipts: what a paid purchase bought, for how much, when and how it was paid.

One is e-mailed when a purchase is paid (keyed by the purchase: sent once however often the
payment is announced), and every paid purchase has a printable receipt page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.config import Settings
from kswifi.control.mail import service as mail
from kswifi.control.mail.letters import compose, link
from kswifi.control.models import Plan, Purchase
from kswifi.control.plans import service as plans
from kswifi.control.purchases import repository
from kswifi.control.users import service as users

RECEIPTED = ("paid", "refunded")
METHODS = {"voucher": "Voucher", "stripe": "Card (Stripe)", "dev": "Demo (no charge)"}


@dataclass(frozen=True)
class Receipt:
    purchase_id: str
    plan_name: str
    data: str
    speed_mbps: int
    validity_days: int
    max_devices: int
    price: str
    amount_cents: int
    currency: str
    paid_at: datetime
    method: str
    reference: str
    provider_reference: str | None
    refunded: bool = False

    @property
    def paid_on(self) -> str:
        return self.paid_at.strftime("%d %b %Y, %H:%M UTC")


def receipt_of(purchase: Purchase, plan: Plan, paid_at: datetime | None = None) -> Receipt:
    """`paid_at` when the row does not say it yet (a conditional UPDATE just set it)."""
    paid = paid_at or purchase.paid_at
    assert paid is not None
    return Receipt(
        purchase_id=purchase.id,
        plan_name=plan.name,
        data=plans.data_text(plan.data_limit_bytes),
        speed_mbps=plan.speed_mbps,
        validity_days=plan.validity_days,
        max_devices=plan.max_devices,
        price=plans.price_text(purchase.amount_cents, purchase.currency),
        amount_cents=purchase.amount_cents,
        currency=purchase.currency,
        paid_at=paid,
        method=METHODS.get(purchase.provider, purchase.provider),
        reference=f"KSW-{purchase.id[:12].upper()}",
        provider_reference=purchase.provider_ref if purchase.provider == "stripe" else None,
        refunded=purchase.status == "refunded",
    )


async def send_receipt(
    db: AsyncSession, settings: Settings, purchase: Purchase, plan: Plan, now: datetime
) -> None:
    """Queue the receipt e-mail of a purchase that was just paid (once per purchase)."""
    user = await users.get_user(db, purchase.user_id)
    receipt = receipt_of(purchase, plan, paid_at=purchase.paid_at or now)
    letter = compose(
        settings,
        "receipt",
        email=user.email,
        receipt=receipt,
        receipt_url=link(settings, f"/receipts/{purchase.id}"),
    )
    await mail.queue(
        db, letter, user.email, user_id=user.id, dedupe_key=f"receipt:{purchase.id}", now=now
    )


async def receipts_for_user(db: AsyncSession, user_id: str) -> list[Receipt]:
    """The person's paid purchases' receipts, newest first."""
    found: list[Receipt] = []
    for view in await repository.list_views_for_user(db, user_id):
        if view.purchase.status in RECEIPTED and view.purchase.paid_at is not None:
            plan = await plans.get_by_id(db, view.purchase.plan_id)
            found.append(receipt_of(view.purchase, plan))
    return found


async def receipt_for_user(db: AsyncSession, user_id: str, purchase_id: str) -> Receipt | None:
    """The person's own paid purchase's receipt; None for anything else (never someone
    else's)."""
    view = await repository.get_view(db, purchase_id)
    if view is None or view.purchase.user_id != user_id or view.purchase.status not in RECEIPTED:
        return None
    plan = await plans.get_by_id(db, view.purchase.plan_id)
    return receipt_of(view.purchase, plan)
