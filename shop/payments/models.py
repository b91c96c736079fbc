"""Payment attempts at the provider, their refunds, and the provider's webhook events.

Only ``shop.payments`` writes these rows; the orders domain reads them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from shop.db import Base, UTCDateTime, utcnow


class PaymentStatus(StrEnum):
    CREATED = "created"  # row written, no intent at the provider yet (or not known)
    PENDING = "pending"  # intent exists, not yet authorized
    REQUIRES_ACTION = "requires_action"
    AUTHORIZED = "authorized"
    CAPTURED = "captured"
    FAILED = "failed"
    VOIDED = "voided"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"

    @property
    def public(self) -> str:
        """The contract's ``payment.status`` (``created`` shows as ``pending``)."""
        return PaymentStatus.PENDING.value if self is PaymentStatus.CREATED else self.value


# Statuses after which the attempt holds nothing at the provider.
SETTLED = frozenset({PaymentStatus.FAILED, PaymentStatus.VOIDED, PaymentStatus.REFUNDED})


class Payment(Base):
    """One row per attempt: ``(order_id, attempt)`` is unique, and so is the key."""

    __tablename__ = "payments"
    __table_args__ = (
        UniqueConstraint("order_id", "attempt"),
        CheckConstraint("amount >= 0", name="amount_not_negative"),
        CheckConstraint("amount_refunded <= amount_captured", name="refunds_within_capture"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    provider: Mapped[str] = mapped_column(String(20))
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    reference: Mapped[str | None] = mapped_column(String(255), unique=True)
    client_secret: Mapped[str | None] = mapped_column(String(255))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20), default=PaymentStatus.CREATED, index=True)
    decline_code: Mapped[str | None] = mapped_column(String(64))
    amount_captured: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_refunded: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_disputed: Mapped[int] = mapped_column(BigInteger, default=0)  # held in open disputes
    # Refunds the shop decided and has not seen through yet (pending or sent line
    # refunds): reserved against what remains, and not taken for dashboard refunds.
    amount_refund_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    verified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())  # ledger = provider
    captured_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Refund(Base):
    """Money given back on a captured attempt: by the shop, or seen in the provider's events."""

    __tablename__ = "refunds"
    __table_args__ = (CheckConstraint("amount > 0", name="amount_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("payments.id", ondelete="CASCADE"),
                                            index=True)
    reference: Mapped[str] = mapped_column(String(255), unique=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class WebhookEvent(Base):
    """A verified provider event, recorded once by its id; ``outcome`` says what it did."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    processed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str | None] = mapped_column(String(40))
    order_id: Mapped[uuid.UUID | None] = mapped_column(index=True)


class RateBucket(Base):
    """One token bucket of the shared provider budget (``shop.payments.budget``): the
    account's, or one endpoint's. ``tokens`` as of ``updated_at``; refills are computed."""

    __tablename__ = "rate_buckets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
