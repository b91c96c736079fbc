"""The money ledger per attempt: the disputed amount, and when the provider last agreed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 18:00:00+00:00

Reviewed by hand: one counter added with a server default that is then dropped (the
model sets it), as 0002 did for the other amounts, and one nullable time (written as
the type ``UTCDateTime`` wraps, as 0001 explains).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.add_column(sa.Column("amount_disputed", sa.BigInteger(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("payments") as batch:
        batch.alter_column("amount_disputed", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.drop_column("verified_at")
        batch.drop_column("amount_disputed")
