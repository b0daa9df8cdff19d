"""Purchases, vouchers and processed payment-provider events."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kswifi.control.models.base import Base, new_id, utcnow


class Purchase(Base):
    __tablename__ = "purchases"
    __table_args__ = (UniqueConstraint("user_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"))
    provider: Mapped[str] = mapped_column(String(16))  # voucher | stripe | dev
    # pending | paid | failed | refunded
    status: Mapped[str] = mapped_column(String(16), default="pending")
    amount_cents: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    idempotency_key: Mapped[str | None] = mapped_column(String(128), default=None)
    provider_ref: Mapped[str | None] = mapped_column(String(255), default=None, index=True)
    checkout_url: Mapped[str | None] = mapped_column(String(2048), default=None)
    # The provider's payment (Stripe: the PaymentIntent) a refund or dispute names.
    payment_ref: Mapped[str | None] = mapped_column(String(255), default=None, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    paid_at: Mapped[datetime | None] = mapped_column(default=None)


class Voucher(Base):
    """A prepaid code; `redeemed_at` is set by one conditional UPDATE, so it is spent once."""

    __tablename__ = "vouchers"

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(320), default=None)
    redeemed_at: Mapped[datetime | None] = mapped_column(default=None)
    redeemed_by: Mapped[str | None] = mapped_column(ForeignKey("users.id"), default=None)
    purchase_id: Mapped[str | None] = mapped_column(String(32), default=None)


class ProviderEvent(Base):
    """Payment-provider events already handled: a replayed webhook finds its id here."""

    __tablename__ = "provider_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(64))
    processed_at: Mapped[datetime] = mapped_column(default=utcnow)
