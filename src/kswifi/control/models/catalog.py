"""Plans (what can be bought) and regions (where gateways stand)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from kswifi.control.models.base import Base, new_id, utcnow


class Plan(Base):
    __tablename__ = "plans"
    __table_args__ = (
        CheckConstraint("data_limit_bytes > 0", name="data_positive"),
        CheckConstraint("speed_mbps > 0", name="speed_positive"),
        CheckConstraint("validity_days > 0", name="validity_positive"),
        CheckConstraint("max_devices > 0", name="devices_positive"),
        CheckConstraint("price_cents >= 0", name="price_not_negative"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    data_limit_bytes: Mapped[int] = mapped_column(BigInteger)
    speed_mbps: Mapped[int]
    validity_days: Mapped[int]
    max_devices: Mapped[int] = mapped_column(default=1)
    price_cents: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Region(Base):
    __tablename__ = "regions"

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    location: Mapped[str] = mapped_column(String(64), default="")
    continent: Mapped[str] = mapped_column(String(2), default="")
    dns_servers: Mapped[str] = mapped_column(String(255), default="1.1.1.1, 2606:4700:4700::1111")
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
