"""A line refund's request body and its view (admin API, page, CLI)."""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel, Field

from shop.orders.refunds.models import RefundRequest
from shop.orders.schemas import MAX_LINES, MAX_QUANTITY, Line, Sku, Strict

MAX_REASON = 500


class RefundLineIn(Strict):
    sku: Sku
    quantity: int = Field(ge=1, le=MAX_QUANTITY, strict=True,
                          description="units of the line to refund")
    restock: bool = Field(default=False, strict=True,
                          description="put the units back on the shelf (on_hand)")


class RefundIn(Strict):
    """Lines to refund: the amount is the server's (unit price times quantity)."""

    lines: list[RefundLineIn] = Field(min_length=1, max_length=MAX_LINES)
    reason: Line = Field(min_length=1, max_length=MAX_REASON)


class RefundLineOut(BaseModel):
    sku: str
    quantity: int
    unit_price: int
    amount: int
    restock: bool
    restocked: bool


class RefundOut(BaseModel):
    id: uuid.UUID
    order_id: uuid.UUID
    status: str = Field(description="pending, sent, succeeded or needs_attention")
    source: str = Field(description="admin or warehouse")
    amount: int
    currency: str
    reason: str
    provider_reference: str | None
    lines: list[RefundLineOut]
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, request: RefundRequest) -> RefundOut:
        return cls(
            id=request.id, order_id=request.order_id, status=request.status,
            source=request.source, amount=request.amount, currency=request.currency.upper(),
            reason=request.reason, provider_reference=request.provider_reference,
            lines=[RefundLineOut(sku=line.sku, quantity=line.quantity,
                                 unit_price=line.unit_price, amount=line.amount,
                                 restock=line.restock, restocked=line.restocked)
                   for line in request.lines],
            created_at=request.created_at, updated_at=request.updated_at)
