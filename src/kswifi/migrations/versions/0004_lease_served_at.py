"""Lease activity: when a gateway last served the session, so idle leases can be reclaimed.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import kswifi.control.models.base

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "gateway_leases",
        sa.Column(
            "served_at", kswifi.control.models.base.UTCDateTime(timezone=True), nullable=True
        ),
    )


def downgrade() -> None:
    with op.batch_alter_table("gateway_leases") as batch:
        batch.drop_column("served_at")
