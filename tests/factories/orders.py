"""Orders and products written through the real use cases, bound to the test session."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from shop.orders.models import Order, Product
from shop.orders.schemas import OrderIn
from shop.orders.service import place_order
from tests.fixtures.api import order_body


def product(session: Session, *, sku: str = "MUG-BLUE", price: int = 1500,
            stock: int = 10, currency: str = "USD") -> Product:
    item = Product(sku=sku, name=f"Product {sku}", price=price, currency=currency,
                   on_hand=stock, reserved=0)
    session.add(item)
    session.commit()
    return item


def order(session: Session, **overrides: Any) -> Order:
    return place_order(session, data=OrderIn.model_validate(order_body(**overrides)),
                       idempotency_key=None)
