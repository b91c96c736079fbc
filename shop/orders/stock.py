"""Stock on the shelf: what an order's lines need, reserved and given back.

Rows are updated with conditional statements in SKU order, so two orders that share
products never deadlock and never oversell.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from shop.orders.models import Order, Product


def shortages(order: Order) -> list[str]:
    """SKUs of the order's lines that the shelf cannot cover right now."""
    return [line.sku for line in order.lines if line.product.available < line.quantity]


def reserve_lines(session: Session, *, order: Order) -> bool:
    """Reserve every line or none: conditional updates, in SKU order (no deadlocks)."""
    for line in sorted(order.lines, key=lambda x: x.sku):
        done = session.execute(
            update(Product)
            .where(Product.sku == line.sku, Product.on_hand - Product.reserved >= line.quantity)
            .values(reserved=Product.reserved + line.quantity)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return False
    order.stock_reserved = True
    return True


def release_lines(session: Session, *, order: Order) -> None:
    """Give back the order's reserved units, in SKU order (only compensation calls it)."""
    for line in sorted(order.lines, key=lambda x: x.sku):
        session.execute(
            update(Product).where(Product.sku == line.sku)
            .values(reserved=Product.reserved - line.quantity)
        )
