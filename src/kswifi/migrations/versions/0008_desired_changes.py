"""Whose peers each desired-state revision of a gateway changed (`desired_changes`), so the
next answer to a gateway is built from the changed people alone, not from all its devices.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import kswifi.control.models.base

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "desired_changes",
        sa.Column("gateway_id", sa.String(length=32), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column(
            "created_at", kswifi.control.models.base.UTCDateTime(timezone=True), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["gateway_id"],
            ["gateways.id"],
            name=op.f("fk_desired_changes_gateway_id_gateways"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "gateway_id", "revision", "user_id", name=op.f("pk_desired_changes")
        ),
    )
    op.create_index(
        op.f("ix_desired_changes_created_at"), "desired_changes", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_desired_changes_created_at"), table_name="desired_changes")
    op.drop_table("desired_changes")
