"""Each gateway keeps a count of the devices installed on it (`gateways.installed_devices`),
moved where a device's address is taken and given back, so placing a new device reads one row
per gateway instead of counting every device. Filled here from today's devices.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("gateways", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("installed_devices", sa.BigInteger(), server_default="0", nullable=False)
        )
    op.execute(
        sa.text(
            "UPDATE gateways SET installed_devices = (SELECT count(*) FROM devices"
            " WHERE devices.gateway_id = gateways.id AND devices.status = 'active')"
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("gateways", schema=None) as batch_op:
        batch_op.drop_column("installed_devices")
