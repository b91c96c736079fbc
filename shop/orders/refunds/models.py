"""The line-refund ledger: one request per refund the shop decided, with its lines.

Kept apart from ``payments.Refund`` (money seen at the provider, dashboard refunds
included): only a request's line with ``restock`` ever puts units back on the shelf.
"""

from __future__ import annotations

import datetime as dt
import uuid
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shop.db import Base, UTCDateTime, utcnow


class RefundSource(StrEnum):
    ADMIN = "admin"
    WAREHOUSE = "warehouse"


class RefundStatus(StrEnum):
    """pending → sent → succeeded; sent (or pending) → needs_attention when it cannot
    complete (refused by the provider, or its outcome stayed unknown); a person (or the
    same key again) sends it once more, with the same provider key."""

    PENDING = "pending"  # recorded, its units and amount reserved; the call is queued
    SENT = "sent"  # the provider call is (or was) under way: the outcome may be unknown
    SUCCEEDED = "succeeded"  # the provider refunded it; restocked lines are on the shelf
    NEEDS_ATTENTION = "needs_attention"  # could not complete: on the attention list


OPEN = (RefundStatus.PENDING, RefundStatus.SENT, RefundStatus.NEEDS_ATTENTION)


class RefundRequest(Base):
    __tablename__ = "refund_requests"
    __table_args__ = (
        UniqueConstraint("order_id", "idempotency_key"),
        CheckConstraint("amount > 0", name="amount_positive"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"),
                                                index=True)
    idempotency_key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))  # what was asked, hashed
    source: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(String(500))
    actor: Mapped[str | None] = mapped_column(String(100))
    payment_attempt: Mapped[int] = mapped_column(Integer)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20), default=RefundStatus.PENDING, index=True)
    provider_reference: Mapped[str | None] = mapped_column(String(255))
    sends: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow,
                                                    onupdate=utcnow)

    lines: Mapped[list[RefundRequestLine]] = relationship(
        back_populates="request", order_by="RefundRequestLine.sku",
        cascade="all, delete-orphan", lazy="selectin")


class RefundRequestLine(Base):
    __tablename__ = "refund_request_lines"
    __table_args__ = (
        UniqueConstraint("request_id", "sku"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("amount >= 0", name="amount_not_negative"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("refund_requests.id", ondelete="CASCADE"), index=True)
    sku: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    restock: Mapped[bool] = mapped_column(Boolean, default=False)
    restocked: Mapped[bool] = mapped_column(Boolean, default=False)

    request: Mapped[RefundRequest] = relationship(back_populates="lines")
