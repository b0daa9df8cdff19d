"""Alerts about sessions, each noted once (`session_alerts`) and sent by the worker, and the
alerts each person turned off (`users.alerts_off`, none at first).

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import kswifi.control.models.base

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "session_alerts",
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column(
            "created_at", kswifi.control.models.base.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column(
            "handled_at", kswifi.control.models.base.UTCDateTime(timezone=True), nullable=True
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["data_sessions.id"],
            name=op.f("fk_session_alerts_session_id_data_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", "kind", name=op.f("pk_session_alerts")),
    )
    with op.batch_alter_table("session_alerts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_session_alerts_handled_at"), ["handled_at"], unique=False
        )

    # A plain ADD COLUMN (with its default, existing rows get "none turned off"): a batch
    # copy of `users` would trip the foreign keys that point at it on SQLite.
    op.add_column(
        "users",
        sa.Column("alerts_off", sa.JSON(), nullable=False, server_default=sa.text("'[]'")),
    )


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("alerts_off")

    with op.batch_alter_table("session_alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_session_alerts_handled_at"))

    op.drop_table("session_alerts")
