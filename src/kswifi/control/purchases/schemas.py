"""Request and response models of the purchases domain (purchases and vouchers)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PaymentMethod = Literal["voucher", "stripe", "dev"]
MAX_VOUCHERS_PER_BATCH = 10_000


class PurchaseCreate(BaseModel):
    """Buy a plan. With a voucher the voucher names the plan; `plan_code` may be left out."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    plan_code: str | None = Field(None, min_length=1, max_length=32)
    payment_method: PaymentMethod
    voucher_code: str | None = Field(None, min_length=1, max_length=64)


class PurchaseOut(BaseModel):
    """A purchase as its buyer sees it; `session_id` is set once it is paid."""

    id: str
    status: str  # pending | paid | failed
    plan_code: str
    provider: str
    session_id: str | None
    amount_cents: int
    currency: str
    checkout_url: str | None
    created_at: datetime
    paid_at: datetime | None


class PurchaseList(BaseModel):
    purchases: list[PurchaseOut]


class WebhookAck(BaseModel):
    received: bool = True
    duplicate: bool = False


class VoucherCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    plan_code: str = Field(min_length=1, max_length=32)
    count: int = Field(ge=1, le=MAX_VOUCHERS_PER_BATCH)


class VoucherBatch(BaseModel):
    plan_code: str
    count: int
    codes: list[str]


class ReceiptOut(BaseModel):
    """What a paid purchase bought, for how much, when and how it was paid."""

    purchase_id: str
    reference: str
    plan_name: str
    data: str
    speed_mbps: int
    validity_days: int
    max_devices: int
    price: str
    amount_cents: int
    currency: str
    paid_at: datetime
    payment_method: str
    payment_reference: str | None


class RefundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    voucher: Literal["void", "reissue"] = Field(
        "void", description="A voucher purchase: its code stays spent, or a new one is made"
    )


class RefundOut(BaseModel):
    purchase_id: str
    status: Literal["refunded"] = "refunded"
    within_policy: bool = Field(description="Unused and within KSWIFI_REFUND_UNUSED_DAYS")
    provider_refund_id: str | None = Field(description="Stripe's refund, for card payments")
    reissued_voucher: str | None = Field(description="The new voucher code, when re-issued")
