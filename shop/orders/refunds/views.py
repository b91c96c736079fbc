"""A line refund as the admin API, the page and the CLI show it (no shop imports beyond
the refund's own model, so ``orders.schemas`` can include it)."""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel, Field

from shop.orders.refunds.models import RefundRequest


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
