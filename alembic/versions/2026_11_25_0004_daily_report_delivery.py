"""Daily reports: delivery state for resends and failures; order events indexed by time.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 16:00:00+00:00

Written by hand, then checked against autogenerate:
- ``daily_reports.resends`` (how many resends were asked for; each has its own email
  ledger key) and ``daily_reports.mail_error`` (the last delivery failure, for admins);
  ``resends`` gets a server default only while existing rows are filled in;
- ``ix_order_events_at``: the report counts a day's confirmations, failures and
  cancellations from the order timeline by time.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("daily_reports") as batch:
        batch.add_column(sa.Column("resends", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("mail_error", sa.Text(), nullable=True))
    with op.batch_alter_table("daily_reports") as batch:
        batch.alter_column("resends", server_default=None)
    op.create_index("ix_order_events_at", "order_events", ["at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_order_events_at", table_name="order_events")
    with op.batch_alter_table("daily_reports") as batch:
        batch.drop_column("mail_error")
        batch.drop_column("resends")
