"""Request and response models of the admin domain (the operator API)."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field

# The session states an operator filters by (one definition: the model's).
MAX_EXTEND_DAYS = 365
MAX_REPORT_DAYS = 366


class AdminSessionOut(BaseModel):
    """A data session as an operator sees it: with its owner and how it ended."""

    id: str
    user_id: str
    user_email: str
    plan_code: str
    plan_name: str
    status: str
    data_limit_bytes: int
    used_bytes: int
    usage_percent: float
    usage_text: str
    speed_mbps: int
    max_devices: int
    created_at: datetime
    activated_at: datetime | None
    expires_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None


class AdminSessionList(BaseModel):
    sessions: list[AdminSessionOut]
    total: int


class ExtendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    days: int = Field(ge=1, le=MAX_EXTEND_DAYS, description="Days of validity to add")


class RevokeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str | None = Field(None, max_length=200, description="Kept in the audit log")


class AdminUserOut(BaseModel):
    id: str
    email: str
    is_admin: bool
    is_disabled: bool
    created_at: datetime
    session_count: int
    live_session_count: int


class AdminUserList(BaseModel):
    users: list[AdminUserOut]
    total: int


class Money(BaseModel):
    currency: str
    amount_cents: int


class DayReport(BaseModel):
    """One UTC day: paid purchases, their value per currency, and data served."""

    day: date
    sales: int
    revenue: list[Money]
    data_bytes: int


class DailyReport(BaseModel):
    days: list[DayReport]
    total_sales: int
    total_revenue: list[Money]
    total_data_bytes: int


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    actor: str
    action: str
    target: str
    detail: str
    created_at: datetime


class AuditList(BaseModel):
    entries: list[AuditOut]
    total: int
