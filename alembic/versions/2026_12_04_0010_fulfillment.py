"""Fulfillment after confirmation: shipments, units the warehouse cannot ship, the ledger
of the warehouse's messages, and each order line's shipped and unfulfilled counters.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 22:00:00+00:00

Reviewed by hand: four new tables (times written as the type ``UTCDateTime`` wraps, as
0001 explains); two counters on ``order_lines`` added with a server default that is
then dropped (the model sets them), as 0002 did, with one check that a line never ships
or gives up more than it holds; an index on the request's status (the admin filter).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shipments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("shipment_id", sa.String(length=255), nullable=False),
        sa.Column("order_id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("carrier", sa.String(length=100), nullable=False),
        sa.Column("tracking_number", sa.String(length=255), nullable=False),
        sa.Column("tracking_url", sa.String(length=2000), nullable=False),
        sa.Column("shipped_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"],
                                name=op.f("fk_shipments_order_id_orders"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shipments")),
        sa.UniqueConstraint("shipment_id", name=op.f("uq_shipments_shipment_id")),
    )
    op.create_index(op.f("ix_shipments_order_id"), "shipments", ["order_id"])
    op.create_index(op.f("ix_shipments_shipped_at"), "shipments", ["shipped_at"])
    op.create_table(
        "shipment_lines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("shipment_pk", sa.Integer(), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_shipment_lines_quantity_positive")),
        sa.ForeignKeyConstraint(["shipment_pk"], ["shipments.id"],
                                name=op.f("fk_shipment_lines_shipment_pk_shipments"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shipment_lines")),
        sa.UniqueConstraint("shipment_pk", "sku", name=op.f("uq_shipment_lines_shipment_pk")),
    )
    op.create_table(
        "unfulfilled_lines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=255), nullable=False),
        sa.Column("refund_key", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_unfulfilled_lines_quantity_positive")),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"],
                                name=op.f("fk_unfulfilled_lines_order_id_orders"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_unfulfilled_lines")),
        sa.UniqueConstraint("message_id", "sku", name=op.f("uq_unfulfilled_lines_message_id")),
    )
    op.create_index(op.f("ix_unfulfilled_lines_order_id"), "unfulfilled_lines", ["order_id"])
    op.create_table(
        "warehouse_messages",
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.Uuid(), nullable=False),
        sa.Column("shipment_id", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"],
                                name=op.f("fk_warehouse_messages_order_id_orders"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_warehouse_messages")),
    )
    op.create_index(op.f("ix_warehouse_messages_order_id"), "warehouse_messages", ["order_id"])
    with op.batch_alter_table("order_lines") as batch:
        batch.add_column(sa.Column("shipped", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("unfulfilled", sa.Integer(), nullable=False,
                                   server_default="0"))
    with op.batch_alter_table("order_lines") as batch:
        batch.alter_column("shipped", server_default=None)
        batch.alter_column("unfulfilled", server_default=None)
        batch.create_check_constraint(
            op.f("ck_order_lines_fulfilled_within_quantity"),
            "shipped >= 0 AND unfulfilled >= 0 AND shipped + unfulfilled <= quantity")
    op.create_index(op.f("ix_fulfillment_requests_status"), "fulfillment_requests", ["status"])


def downgrade() -> None:
    op.drop_index(op.f("ix_fulfillment_requests_status"), table_name="fulfillment_requests")
    with op.batch_alter_table("order_lines") as batch:
        batch.drop_constraint(op.f("ck_order_lines_fulfilled_within_quantity"), type_="check")
        batch.drop_column("unfulfilled")
        batch.drop_column("shipped")
    op.drop_index(op.f("ix_warehouse_messages_order_id"), table_name="warehouse_messages")
    op.drop_table("warehouse_messages")
    op.drop_index(op.f("ix_unfulfilled_lines_order_id"), table_name="unfulfilled_lines")
    op.drop_table("unfulfilled_lines")
    op.drop_table("shipment_lines")
    op.drop_index(op.f("ix_shipments_shipped_at"), table_name="shipments")
    op.drop_index(op.f("ix_shipments_order_id"), table_name="shipments")
    op.drop_table("shipments")
