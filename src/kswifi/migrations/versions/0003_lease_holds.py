"""Lease holds: a lowered grant stays reserved until the gateway applied it.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "gateway_leases",
        sa.Column("held_bytes", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column(
        "gateway_leases",
        sa.Column("held_until_revision", sa.BigInteger(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    with op.batch_alter_table("gateway_leases") as batch:
        batch.drop_column("held_until_revision")
        batch.drop_column("held_bytes")
