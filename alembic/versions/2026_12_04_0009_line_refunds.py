"""Line refunds: the shop's refund requests with their lines, units refunded per order
line, and the amount of refunds the shop has decided but not yet seen through.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 22:00:00+00:00

Reviewed by hand: two new tables (names from the naming convention), and two counters
added with a server default that is then dropped (the models set them), as 0006 did.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "refund_requests",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("order_id", sa.Uuid(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=True),
        sa.Column("payment_attempt", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("provider_reference", sa.String(length=255), nullable=True),
        sa.Column("sends", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_refund_requests_amount_positive")),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"],
                                name=op.f("fk_refund_requests_order_id_orders"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refund_requests")),
        sa.UniqueConstraint("order_id", "idempotency_key",
                            name=op.f("uq_refund_requests_order_id")),
    )
    op.create_index(op.f("ix_refund_requests_order_id"), "refund_requests", ["order_id"],
                    unique=False)
    op.create_index(op.f("ix_refund_requests_status"), "refund_requests", ["status"],
                    unique=False)
    op.create_table(
        "refund_request_lines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("unit_price", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("restock", sa.Boolean(), nullable=False),
        sa.Column("restocked", sa.Boolean(), nullable=False),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_refund_request_lines_quantity_positive")),
        sa.CheckConstraint("amount >= 0",
                           name=op.f("ck_refund_request_lines_amount_not_negative")),
        sa.ForeignKeyConstraint(["request_id"], ["refund_requests.id"],
                                name=op.f("fk_refund_request_lines_request_id_refund_requests"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refund_request_lines")),
        sa.UniqueConstraint("request_id", "sku",
                            name=op.f("uq_refund_request_lines_request_id")),
    )
    op.create_index(op.f("ix_refund_request_lines_request_id"), "refund_request_lines",
                    ["request_id"], unique=False)

    with op.batch_alter_table("order_lines") as batch:
        batch.add_column(sa.Column("quantity_refunded", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.create_check_constraint(
            "refunded_within_quantity",
            "quantity_refunded >= 0 AND quantity_refunded <= quantity")
    with op.batch_alter_table("order_lines") as batch:
        batch.alter_column("quantity_refunded", server_default=None)
    with op.batch_alter_table("payments") as batch:
        batch.add_column(sa.Column("amount_refund_pending", sa.BigInteger(), nullable=False,
                                   server_default="0"))
    with op.batch_alter_table("payments") as batch:
        batch.alter_column("amount_refund_pending", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.drop_column("amount_refund_pending")
    with op.batch_alter_table("order_lines") as batch:
        batch.drop_constraint("refunded_within_quantity", type_="check")
        batch.drop_column("quantity_refunded")
    op.drop_index(op.f("ix_refund_request_lines_request_id"), table_name="refund_request_lines")
    op.drop_table("refund_request_lines")
    op.drop_index(op.f("ix_refund_requests_status"), table_name="refund_requests")
    op.drop_index(op.f("ix_refund_requests_order_id"), table_name="refund_requests")
    op.drop_table("refund_requests")
