"""Request and response models of the usage domain."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class UsagePoint(BaseModel):
    at: datetime
    rx_bytes: int
    tx_bytes: int
    total_bytes: int
    cumulative_bytes: int


class UsageHistory(BaseModel):
    session_id: str
    bucket_seconds: int
    points: list[UsagePoint]
