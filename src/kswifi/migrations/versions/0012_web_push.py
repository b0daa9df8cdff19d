"""Web Push: each browser's subscription (`push_subscriptions`) and the notifications queued
for them (`push_messages`, delivered by the worker like e-mail).

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import kswifi.control.models.base

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "push_subscriptions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("endpoint", sa.String(length=2048), nullable=False),
        sa.Column("p256dh", sa.String(length=128), nullable=False),
        sa.Column("auth", sa.String(length=64), nullable=False),
        sa.Column(
            "created_at", kswifi.control.models.base.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column(
            "last_sent_at", kswifi.control.models.base.UTCDateTime(timezone=True), nullable=True
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_push_subscriptions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_push_subscriptions")),
        sa.UniqueConstraint("endpoint", name=op.f("uq_push_subscriptions_endpoint")),
    )
    with op.batch_alter_table("push_subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_push_subscriptions_user_id"), ["user_id"], unique=False
        )

    op.create_table(
        "push_messages",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("subscription_id", sa.String(length=32), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column(
            "next_attempt_at", kswifi.control.models.base.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("claim_token", sa.String(length=32), nullable=True),
        sa.Column(
            "claimed_until", kswifi.control.models.base.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column(
            "created_at", kswifi.control.models.base.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("sent_at", kswifi.control.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["push_subscriptions.id"],
            name=op.f("fk_push_messages_subscription_id_push_subscriptions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_push_messages")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_push_messages_dedupe_key")),
    )
    with op.batch_alter_table("push_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_push_messages_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index("ix_push_messages_due", ["status", "next_attempt_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_push_messages_subscription_id"), ["subscription_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("push_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_push_messages_subscription_id"))
        batch_op.drop_index("ix_push_messages_due")
        batch_op.drop_index(batch_op.f("ix_push_messages_created_at"))

    op.drop_table("push_messages")
    with op.batch_alter_table("push_subscriptions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_push_subscriptions_user_id"))

    op.drop_table("push_subscriptions")
