"""Stock on the shelf: what an order's lines need, reserved, given back, and shipped.

Rows are updated with conditional statements in SKU order, so two orders that share
products never deadlock and never oversell. What an order holds is each line's
``outstanding`` units (neither shipped nor given up by the warehouse): a shipped unit
leaves ``on_hand`` and ``reserved`` together, once; a unit the warehouse cannot ship
leaves ``reserved`` only.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shop.exceptions import InvariantBroken
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
    """Give back the order's reserved units, in SKU order (only compensation calls it):
    what its lines still hold, not what left the shelf or was given up already."""
    for line in sorted(order.lines, key=lambda x: x.sku):
        if line.outstanding > 0:
            session.execute(
                update(Product).where(Product.sku == line.sku)
                .values(reserved=Product.reserved - line.outstanding)
            )


def ship_units(session: Session, *, units: Mapping[str, int]) -> None:
    """Shipped units leave the shelf: ``on_hand`` and ``reserved`` fall together, in SKU
    order; a row that does not hold them reserved is an ``InvariantBroken``."""
    for sku in sorted(units):
        done = session.execute(
            update(Product)
            .where(Product.sku == sku, Product.reserved >= units[sku],
                   Product.on_hand >= units[sku])
            .values(on_hand=Product.on_hand - units[sku], reserved=Product.reserved - units[sku])
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise InvariantBroken(f"{sku}: {units[sku]} shipped units were not reserved")


def unreserve_units(session: Session, *, units: Mapping[str, int]) -> None:
    """Units the warehouse cannot ship are no longer held for their order, in SKU order."""
    for sku in sorted(units):
        done = session.execute(
            update(Product).where(Product.sku == sku, Product.reserved >= units[sku])
            .values(reserved=Product.reserved - units[sku])
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise InvariantBroken(f"{sku}: {units[sku]} unfulfilled units were not reserved")


def correct_on_hand(session: Session, *, counts: Mapping[str, int]) -> list[dict[str, int | str]]:
    """Set ``on_hand`` to what the warehouse counted, in SKU order; never below what is
    reserved (the check constraint): those orders' own answers will release it. Returns
    each change as ``{"sku", "from", "to", "counted"}``."""
    changes: list[dict[str, int | str]] = []
    for sku in sorted(counts):
        product = session.scalars(select(Product).where(Product.sku == sku)
                                  .with_for_update()
                                  .execution_options(populate_existing=True)).one()
        target = max(counts[sku], product.reserved)
        if target != product.on_hand:
            changes.append({"sku": sku, "from": product.on_hand, "to": target,
                            "counted": counts[sku]})
            product.on_hand = target
    return changes
