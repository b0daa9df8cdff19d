"""Data sessions: what a purchase grants, with its limits copied from the plan."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from kswifi.control.models.base import UPDATED_TABLE_OPTIONS, Base, new_id, utcnow


class SessionStatus(StrEnum):
    """Where a data session is in its life (stored as its string value)."""

    QUEUED = "queued"
    """Bought while another session is current: waits its turn (oldest purchase first)."""
    ACTIVE = "active"
    """Current (the person's devices draw from it), no traffic yet."""
    CONNECTED = "connected"
    """Current, and a device of it has connected."""
    EXHAUSTED = "exhausted"
    EXPIRED = "expired"
    REVOKED = "revoked"


SESSION_STATES = tuple(SessionStatus)
LIVE_STATES = (SessionStatus.ACTIVE, SessionStatus.CONNECTED)
"""A session a device may draw data from."""
ENDED_STATES = (SessionStatus.EXHAUSTED, SessionStatus.EXPIRED, SessionStatus.REVOKED)
"""A session that is over (the one name for this set)."""
USABLE_STATES = (SessionStatus.QUEUED, *LIVE_STATES)
"""A session with data still to give: current or waiting its turn."""


class DataSession(Base):
    __tablename__ = "data_sessions"
    __table_args__ = (
        Index("ix_data_sessions_status_expires", "status", "expires_at"),
        {"postgresql_with": UPDATED_TABLE_OPTIONS},
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"))
    purchase_id: Mapped[str] = mapped_column(ForeignKey("purchases.id"), unique=True)
    plan_code: Mapped[str] = mapped_column(String(32))
    plan_name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=SessionStatus.ACTIVE.value)
    data_limit_bytes: Mapped[int] = mapped_column(BigInteger)
    speed_mbps: Mapped[int]
    validity_seconds: Mapped[int] = mapped_column(BigInteger)
    max_devices: Mapped[int]
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    rx_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    tx_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    activation_deadline: Mapped[datetime]
    # The clock starts at the first byte through a gateway: until then both are None (and the
    # session ends at `activation_deadline` if never used).
    activated_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_seen_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    end_reason: Mapped[str | None] = mapped_column(String(32), default=None)
    warned_percent: Mapped[int] = mapped_column(default=0)


class UsageRollup(Base):
    """Bytes per session per minute, for charts and daily reports."""

    __tablename__ = "usage_rollups"
    __table_args__ = {"postgresql_with": UPDATED_TABLE_OPTIONS}

    session_id: Mapped[str] = mapped_column(
        ForeignKey("data_sessions.id", ondelete="CASCADE"), primary_key=True
    )
    bucket_start: Mapped[datetime] = mapped_column(primary_key=True)
    rx_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    tx_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class AlertKind(StrEnum):
    """What a person may be told about a session, each at most once per session."""

    USAGE_80 = "usage_80"
    USAGE_95 = "usage_95"
    DATA_USED_UP = "data_used_up"
    EXPIRING = "expiring"
    """24 hours before the session's validity ends."""
    EXPIRED = "expired"
    NEXT_STARTED = "next_started"
    """A queued session became current by itself."""


ALERT_KINDS = tuple(AlertKind)


class SessionAlert(Base):
    """A fact a person should hear about (`kind` of `session_id`), noted once (the key) by
    whatever transaction made it true, and sent by the worker (`handled_at` set then)."""

    __tablename__ = "session_alerts"

    session_id: Mapped[str] = mapped_column(
        ForeignKey("data_sessions.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    handled_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
