"""Connect Profiles outlive sessions: a device's session is the one it draws from now.

`devices.session_id` becomes nullable (None: the device is in the walled garden, or waits
beyond the current session's device limit); gateways report the walled garden's bytes
(`gateways.garden_rx_bytes` / `garden_tx_bytes`). Devices of live sessions keep their session, so
phones set up before the upgrade keep working through it; an installed device whose session
already ended stays installed, in the garden, instead of being removed. Sessions bought from
now on while another is current are `queued` (a status value: no schema change).

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.alter_column("session_id", existing_type=sa.String(length=32), nullable=True)
    with op.batch_alter_table("gateways", schema=None) as batch_op:
        for column in ("garden_rx_bytes", "garden_tx_bytes"):
            batch_op.add_column(
                sa.Column(column, sa.BigInteger(), server_default="0", nullable=False)
            )
    op.execute(
        sa.text(
            "UPDATE devices SET session_id = NULL WHERE status = 'active' AND session_id IN"
            " (SELECT id FROM data_sessions WHERE status IN ('exhausted', 'expired', 'revoked'))"
        )
    )


def downgrade() -> None:
    bind = op.get_bind()
    garden = bind.execute(
        sa.text("SELECT count(*) FROM devices WHERE session_id IS NULL AND status = 'active'")
    ).scalar_one()
    if garden:
        raise RuntimeError(
            f"{garden} installed Connect Profiles have no session (the walled garden); the "
            "schema before revision 0006 cannot hold them. Remove them first."
        )
    op.execute(sa.text("DELETE FROM devices WHERE session_id IS NULL"))
    with op.batch_alter_table("gateways", schema=None) as batch_op:
        batch_op.drop_column("garden_tx_bytes")
        batch_op.drop_column("garden_rx_bytes")
    op.execute(sa.text("UPDATE data_sessions SET status = 'active' WHERE status = 'queued'"))
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.alter_column("session_id", existing_type=sa.String(length=32), nullable=False)
