"""The outbox keeps the request id that caused each message.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 18:00:00+00:00

Reviewed by hand: one nullable column, added in place (a rebuild on SQLite).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("trace", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("trace")
