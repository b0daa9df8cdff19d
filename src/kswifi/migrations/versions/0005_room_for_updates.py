"""Room on each page for updated rows of the tables every usage report updates.

Sessions, leases and minute rollups are updated hundreds of times a second under load. With
full pages (the default fillfactor, 100) each new row version goes to another page and is
added to every index; with 30 % of each page free it stays on its page (a HOT update) and
no index changes. PostgreSQL only (SQLite has no such setting); pages written before this
migration keep their layout until rewritten.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The models say the same (`UPDATED_TABLE_OPTIONS`), for tables created from the metadata.
UPDATED_TABLES = ("data_sessions", "gateway_leases", "usage_rollups")
FILLFACTOR = 70


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in UPDATED_TABLES:
        op.execute(f"ALTER TABLE {table} SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in UPDATED_TABLES:
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
