"""Seed the default plans and the three launch regions.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GIB = 1024**3

PLANS = [
    # code, name, data bytes, Mbps, validity days, devices, price cents, currency
    ("basic", "Basic Session", 1 * GIB, 10, 7, 1, 499, "USD"),
    ("premium", "Premium Session", 5 * GIB, 25, 30, 1, 1499, "USD"),
    ("ultra", "Ultra Session", 20 * GIB, 50, 30, 3, 3999, "USD"),
]

REGIONS = [
    ("us-east", "US East", "New York", "NA", "1.1.1.1, 2606:4700:4700::1111"),
    ("eu-west", "EU West", "London", "EU", "1.1.1.1, 2606:4700:4700::1111"),
    ("ap-southeast", "Asia Pacific", "Singapore", "AS", "1.1.1.1, 2606:4700:4700::1111"),
]


def upgrade() -> None:
    now = datetime.now(UTC)
    plans = sa.table(
        "plans",
        sa.column("id", sa.String),
        sa.column("code", sa.String),
        sa.column("name", sa.String),
        sa.column("data_limit_bytes", sa.BigInteger),
        sa.column("speed_mbps", sa.Integer),
        sa.column("validity_days", sa.Integer),
        sa.column("max_devices", sa.Integer),
        sa.column("price_cents", sa.Integer),
        sa.column("currency", sa.String),
        sa.column("is_active", sa.Boolean),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    op.bulk_insert(
        plans,
        [
            {
                "id": f"plan{code}".ljust(32, "0"),
                "code": code,
                "name": name,
                "data_limit_bytes": data,
                "speed_mbps": speed,
                "validity_days": days,
                "max_devices": devices,
                "price_cents": price,
                "currency": currency,
                "is_active": True,
                "created_at": now,
                "updated_at": now,
            }
            for code, name, data, speed, days, devices, price, currency in PLANS
        ],
    )
    regions = sa.table(
        "regions",
        sa.column("code", sa.String),
        sa.column("name", sa.String),
        sa.column("location", sa.String),
        sa.column("continent", sa.String),
        sa.column("dns_servers", sa.String),
        sa.column("is_active", sa.Boolean),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    op.bulk_insert(
        regions,
        [
            {
                "code": code,
                "name": name,
                "location": location,
                "continent": continent,
                "dns_servers": dns,
                "is_active": True,
                "created_at": now,
            }
            for code, name, location, continent, dns in REGIONS
        ],
    )


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM regions WHERE code IN ('us-east', 'eu-west', 'ap-southeast')"))
    op.execute(sa.text("DELETE FROM plans WHERE code IN ('basic', 'premium', 'ultra')"))
