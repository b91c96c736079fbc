"""Loading orders: the one loader every use case shares."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload, selectinload

from shop.orders.models import Order, OrderLine


class OrderNotFound(Exception):
    """No order has this id."""


def load(session: Session, *, order_id: uuid.UUID, lines: bool = False,
         products: bool = False, events: bool = False, lock: bool = False) -> Order | None:
    """The order, or None; with its lines (and their products) in the same statement,
    its timeline if asked; ``lock`` holds its row until the caller's commit."""
    query = select(Order).where(Order.id == order_id)
    if lock:
        query = query.with_for_update(of=Order)
    if products:
        query = query.options(joinedload(Order.lines).joinedload(OrderLine.product))
    elif lines:
        query = query.options(joinedload(Order.lines))
    if events:
        query = query.options(selectinload(Order.events))
    return session.scalars(query).unique().one_or_none()


def require(session: Session, *, order_id: uuid.UUID, lines: bool = False,
            events: bool = False) -> Order:
    """The order, or ``OrderNotFound``."""
    order = load(session, order_id=order_id, lines=lines, events=events)
    if order is None:
        raise OrderNotFound(str(order_id))
    return order
