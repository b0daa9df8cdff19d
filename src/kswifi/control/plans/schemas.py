"""Request and response models of the plans domain."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Bounds that keep an operator typo (an extra zero, a negative price) out of the catalog.
MAX_DATA_MB = 1024 * 1024 * 100  # 100 TB
MAX_SPEED_MBPS = 100_000
MAX_VALIDITY_DAYS = 3650
MAX_DEVICES = 100
MAX_PRICE_CENTS = 100_000_000
CODE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"


def _upper_currency(value: str) -> str:
    value = value.strip().upper()
    if len(value) != 3 or not value.isascii() or not value.isalpha():
        raise ValueError("a three-letter ISO 4217 code such as USD")
    return value


class PlanOut(BaseModel):
    """A plan as the catalog shows it to anyone."""

    code: str
    name: str
    data_limit_bytes: int
    data_limit_mb: int
    data_text: str
    speed_mbps: int
    validity_days: int
    max_devices: int
    price_cents: int
    currency: str
    price_text: str


class PlanList(BaseModel):
    plans: list[PlanOut]


class AdminPlanOut(PlanOut):
    """A plan as operators see it: with its state and history."""

    id: str
    is_active: bool
    created_at: datetime
    updated_at: datetime


class AdminPlanList(BaseModel):
    plans: list[AdminPlanOut]


class PlanCreate(BaseModel):
    """A new plan; `data_limit_mb` uses 1 GB = 1024 MB."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    code: str = Field(pattern=CODE_PATTERN, description="Lowercase letters, digits, - and _")
    name: str = Field(min_length=1, max_length=64)
    data_limit_mb: int = Field(ge=1, le=MAX_DATA_MB)
    speed_mbps: int = Field(ge=1, le=MAX_SPEED_MBPS)
    validity_days: int = Field(ge=1, le=MAX_VALIDITY_DAYS)
    max_devices: int = Field(1, ge=1, le=MAX_DEVICES)
    price_cents: int = Field(ge=0, le=MAX_PRICE_CENTS)
    currency: str = "USD"
    is_active: bool = True

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        return _upper_currency(value)


class PlanUpdate(BaseModel):
    """Fields to change; the code never changes. Sessions already sold keep their copy."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(None, min_length=1, max_length=64)
    data_limit_mb: int | None = Field(None, ge=1, le=MAX_DATA_MB)
    speed_mbps: int | None = Field(None, ge=1, le=MAX_SPEED_MBPS)
    validity_days: int | None = Field(None, ge=1, le=MAX_VALIDITY_DAYS)
    max_devices: int | None = Field(None, ge=1, le=MAX_DEVICES)
    price_cents: int | None = Field(None, ge=0, le=MAX_PRICE_CENTS)
    currency: str | None = None
    is_active: bool | None = None

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str | None) -> str | None:
        return None if value is None else _upper_currency(value)
