"""Catalogue, orders, their lines and timeline, API idempotency keys, fulfillment, and
what needs a person's attention."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    inspect,
)
from sqlalchemy.orm import Mapped, mapped_column, object_session, relationship

from shop.db import Base, UTCDateTime, utcnow
from shop.exceptions import InvariantBroken
from shop.orders.states import Event, OrderStatus, Stage, Step, next_stage


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (
        CheckConstraint("price >= 0", name="price_not_negative"),
        CheckConstraint("on_hand >= 0", name="on_hand_not_negative"),
        CheckConstraint("reserved >= 0", name="reserved_not_negative"),
        CheckConstraint("reserved <= on_hand", name="available_not_negative"),
    )

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    price: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    on_hand: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint("subtotal >= 0", name="subtotal_not_negative"),
        CheckConstraint("total >= 0", name="total_not_negative"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), index=True, default=OrderStatus.PENDING)
    stage: Mapped[str] = mapped_column(String(20), default=Stage.PLACED)
    currency: Mapped[str] = mapped_column(String(3))
    subtotal: Mapped[int] = mapped_column(BigInteger)
    total: Mapped[int] = mapped_column(BigInteger)
    payment_method: Mapped[str] = mapped_column(String(255))
    payment_attempt: Mapped[int] = mapped_column(Integer, default=1)
    shipping_address: Mapped[dict[str, Any]] = mapped_column(JSON)
    failure_step: Mapped[str | None] = mapped_column(String(20))
    failure_reason: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(Text)  # for the customer
    failure_detail: Mapped[str | None] = mapped_column(Text)  # for admins and logs
    stock_reserved: Mapped[bool] = mapped_column(Boolean, default=False)
    resumes: Mapped[int] = mapped_column(Integer, default=0)  # sweeps since it last moved
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)

    # Every UPDATE of an order compares and bumps ``version``: two copies of one step
    # racing to move the same order cannot both win (the loser gets StaleDataError).
    __mapper_args__ = {"version_id_col": version}

    lines: Mapped[list[OrderLine]] = relationship(
        back_populates="order", order_by="OrderLine.sku", cascade="all, delete-orphan"
    )
    events: Mapped[list[OrderEvent]] = relationship(
        back_populates="order", order_by="OrderEvent.id", cascade="all, delete-orphan"
    )

    @property
    def current_stage(self) -> Stage:
        return Stage(self.stage)

    def apply(
        self,
        event: Event,
        *,
        detail: dict[str, Any] | None = None,
        failure: tuple[Step, str, str] | None = None,
        internal: dict[str, Any] | None = None,
        actor: str | None = None,
    ) -> None:
        """Move the order through the transition table and record it on the timeline.

        ``failure`` is ``(step, reason, message)``, the message written for the
        customer; ``internal`` holds what only admins and logs may see.
        """
        stage = next_stage(self.current_stage, event)
        now = utcnow()
        self.stage = stage
        self.status = stage.status
        self.updated_at = now
        self.resumes = 0
        if stage is Stage.FAILED:
            if failure is None:
                raise InvariantBroken("a failure needs (step, reason, message)")
            self.failure_step, self.failure_reason, self.failure_message = failure
            self.failure_detail = str((internal or {}).get("error") or "") or None
        elif failure is None:
            self.failure_step = self.failure_reason = self.failure_message = None
            self.failure_detail = None
        record = dict(detail or {})
        if failure is not None:
            record.update(step=failure[0].value, reason=failure[1])
        self.record(event.value, detail=record, at=now, internal=internal, actor=actor)

    def record(self, type_: str, *, detail: dict[str, Any] | None = None,
               at: dt.datetime | None = None, internal: dict[str, Any] | None = None,
               actor: str | None = None) -> None:
        """Append a timeline entry that is not a status change (e.g. an email sent).

        The entry is added without loading the timeline when it is not loaded already:
        a step writes one row, it does not read the order's whole history.
        """
        entry = OrderEvent(type=type_, detail=detail or {}, at=at or utcnow(),
                           internal=internal or None, actor=actor)
        session = object_session(self)
        if session is None or "events" not in inspect(self).unloaded:
            self.events.append(entry)
        else:
            entry.order_id = self.id
            session.add(entry)


class OrderLine(Base):
    __tablename__ = "order_lines"
    __table_args__ = (
        UniqueConstraint("order_id", "sku"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("unit_price >= 0", name="unit_price_not_negative"),
        CheckConstraint("shipped >= 0 AND unfulfilled >= 0 AND shipped + unfulfilled <= quantity",
                        name="fulfilled_within_quantity"),
        CheckConstraint("quantity_refunded >= 0 AND quantity_refunded <= quantity",
                        name="refunded_within_quantity"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    sku: Mapped[str] = mapped_column(ForeignKey("products.sku"))
    name: Mapped[str] = mapped_column(String(200))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[int] = mapped_column(BigInteger)
    line_total: Mapped[int] = mapped_column(BigInteger)
    shipped: Mapped[int] = mapped_column(Integer, default=0)  # units that left the shelf
    unfulfilled: Mapped[int] = mapped_column(Integer, default=0)  # units that never will
    # Units refunded or being refunded by line refunds (reserved when requested).
    quantity_refunded: Mapped[int] = mapped_column(Integer, default=0)

    order: Mapped[Order] = relationship(back_populates="lines")

    @property
    def outstanding(self) -> int:
        """Units still reserved for this line: neither shipped nor given up."""
        return self.quantity - (self.shipped or 0) - (self.unfulfilled or 0)
    product: Mapped[Product] = relationship(viewonly=True)


class OrderEvent(Base):
    __tablename__ = "order_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("orders.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    type: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # shown to the customer
    internal: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # admins only
    actor: Mapped[str | None] = mapped_column(String(100))  # who did it, for admin actions

    order: Mapped[Order] = relationship(back_populates="events")


class IdempotencyKey(Base):
    """One row per storefront ``Idempotency-Key``: the primary key is the guard."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("orders.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class FulfillmentRequest(Base):
    """The warehouse request for a confirmed order; its id is the message id."""

    __tablename__ = "fulfillment_requests"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    order_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("orders.id", ondelete="CASCADE"), unique=True
    )
    # requested, partially_shipped, shipped, delivered, cancelled, unfulfillable
    status: Mapped[str] = mapped_column(String(20), default="requested", index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Attention(Base):
    """Something about an order that a person (or the reconciliation job) must look at.

    One row per ``(order, kind)``; ``resolved_at`` is set when it is dealt with.
    """

    __tablename__ = "order_attention"
    __table_args__ = (UniqueConstraint("order_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(40), index=True)
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
