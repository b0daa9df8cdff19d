"""Request and response models of the sessions domain."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class SessionOut(BaseModel):
    """A data session as its owner sees it."""

    id: str
    status: str
    plan_code: str
    plan_name: str
    data_limit_bytes: int
    data_limit_mb: int
    used_bytes: int
    remaining_bytes: int
    usage_percent: float
    usage_text: str
    speed_mbps: int
    max_devices: int
    created_at: datetime
    activation_deadline: datetime
    activated_at: datetime | None
    expires_at: datetime | None = Field(
        description="When its validity ends; null until its clock starts (see `starts`)"
    )
    seconds_left: int | None
    starts: str | None = Field(
        None, description="When the clock starts, for a session whose clock has not started"
    )


class SessionList(BaseModel):
    sessions: list[SessionOut]
