"""What the warehouse said: its shipments, the units it could not ship, and the ledger of
its messages (each applied once, by its ``message_id``).

An order line's own counters (``OrderLine.shipped``, ``OrderLine.unfulfilled``) say how
many of its units left the shelf or will never ship; what is left is still reserved.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shop.db import Base, UTCDateTime, utcnow


class Shipment(Base):
    """One parcel, by the warehouse's own ``shipment_id`` (unique across orders)."""

    __tablename__ = "shipments"

    id: Mapped[int] = mapped_column(primary_key=True)
    shipment_id: Mapped[str] = mapped_column(String(255), unique=True)
    order_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    message_id: Mapped[str] = mapped_column(String(255))
    carrier: Mapped[str] = mapped_column(String(100))
    tracking_number: Mapped[str] = mapped_column(String(255))
    tracking_url: Mapped[str] = mapped_column(String(2000))
    shipped_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    lines: Mapped[list[ShipmentLine]] = relationship(
        order_by="ShipmentLine.sku", cascade="all, delete-orphan", lazy="selectin")


class ShipmentLine(Base):
    __tablename__ = "shipment_lines"
    __table_args__ = (
        UniqueConstraint("shipment_pk", "sku"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    shipment_pk: Mapped[int] = mapped_column(ForeignKey("shipments.id", ondelete="CASCADE"))
    sku: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int] = mapped_column(Integer)


class UnfulfilledLine(Base):
    """Units of a line the warehouse said it cannot ship, and the refund asked for them."""

    __tablename__ = "unfulfilled_lines"
    __table_args__ = (
        UniqueConstraint("message_id", "sku"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    message_id: Mapped[str] = mapped_column(String(255))
    sku: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int] = mapped_column(Integer)
    amount: Mapped[int] = mapped_column(BigInteger)  # minor units refunded for these units
    reason: Mapped[str] = mapped_column(String(255))
    refund_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WarehouseMessage(Base):
    """The ledger: one row per warehouse message applied (or parked), written in the same
    transaction as its effects, so a redelivery finds it and does nothing."""

    __tablename__ = "warehouse_messages"

    message_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    order_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    shipment_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(20))  # applied, parked, duplicate
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    applied_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
