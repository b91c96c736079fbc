"""A line refund's request body (admin API, page, CLI); its view is ``views.RefundOut``."""

from __future__ import annotations

from pydantic import Field

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
