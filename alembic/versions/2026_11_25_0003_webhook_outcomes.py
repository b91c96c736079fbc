"""Webhook events say what they did and to which order.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 16:00:00+00:00

Reviewed by hand: two nullable columns and an index, added in place on PostgreSQL
and by a table rebuild on SQLite (``batch_alter_table``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_events") as batch:
        batch.add_column(sa.Column("outcome", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("order_id", sa.Uuid(), nullable=True))
        batch.create_index(op.f("ix_webhook_events_order_id"), ["order_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_index(op.f("ix_webhook_events_order_id"))
        batch.drop_column("order_id")
        batch.drop_column("outcome")
