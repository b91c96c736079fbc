"""The order workflow: its steps, and what each step's outcome sends next.

The canvas is a chain into a group, written as data::

    check_inventory -> charge_payment -> reserve_stock -> capture_payment
        -> { send_confirmation, request_fulfillment }

Unlike a Celery ``chain``, the next message is written to the outbox in the same
transaction as the state change that earns it. So a step re-run after a crash
finds the order already moved and sends nothing, a duplicate delivery cannot fork
the chain, and a crash between commit and publish loses nothing.

Every step is a use case: it reloads the order, does nothing unless the order is at
its stage, and commits once at the end. Provider calls happen outside transactions.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shop.db import utcnow
from shop.messaging.service import enqueue_task
from shop.orders.models import Order, Product
from shop.orders.states import Event, Stage, Step

TASK_PREFIX = "shop.orders"
NEXT_AFTER: dict[Stage, tuple[str, ...]] = {
    Stage.PLACED: ("check_inventory",),
    Stage.IN_STOCK: ("charge_payment",),
    Stage.AUTHORIZED: ("reserve_stock",),
    Stage.RESERVED: ("capture_payment",),
    Stage.CONFIRMED: ("send_confirmation", "request_fulfillment"),
}
STEP_OF_TASK: dict[str, Step] = {
    "check_inventory": Step.INVENTORY,
    "charge_payment": Step.PAYMENT,
    "reserve_stock": Step.RESERVATION,
    "capture_payment": Step.PAYMENT,
    "send_confirmation": Step.NOTIFICATION,
    "request_fulfillment": Step.FULFILLMENT,
}


def task_name(step: str) -> str:
    return f"{TASK_PREFIX}.{step}"


def continue_from(session: Session, *, order: Order) -> None:
    """Enqueue (in the caller's transaction) the steps that follow the order's stage."""
    for step in NEXT_AFTER.get(order.current_stage, ()):
        enqueue_task(session, name=task_name(step), kwargs={"order_id": str(order.id)})


def start(session: Session, *, order: Order) -> None:
    """Begin the workflow of a new order (called inside ``place_order``'s transaction)."""
    continue_from(session, order=order)


def advance(
    session: Session, *, order: Order, event: Event,
    failure: tuple[Step, str, str] | None = None, detail: Mapping[str, object] | None = None,
) -> None:
    """Apply ``event`` and enqueue what follows; the caller commits."""
    order.apply(event, failure=failure, detail=dict(detail or {}))
    continue_from(session, order=order)


def load(session: Session, *, order_id: uuid.UUID, for_update: bool = False) -> Order | None:
    query = select(Order).where(Order.id == order_id)
    if for_update:
        query = query.with_for_update()
    return session.scalar(query)


def shortages(session: Session, *, order: Order) -> list[str]:
    """SKUs of the order's lines that the shelf cannot cover right now."""
    skus = [line.sku for line in order.lines]
    stock = {p.sku: p.available
             for p in session.scalars(select(Product).where(Product.sku.in_(skus)))}
    return [line.sku for line in order.lines if stock.get(line.sku, 0) < line.quantity]


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
    return True


def release_lines(session: Session, *, order: Order) -> None:
    """Give back the order's reserved units, in SKU order."""
    for line in sorted(order.lines, key=lambda x: x.sku):
        session.execute(
            update(Product).where(Product.sku == line.sku)
            .values(reserved=Product.reserved - line.quantity)
        )


STUCK_STAGES = (Stage.PLACED, Stage.IN_STOCK, Stage.AUTHORIZED, Stage.RESERVED)


def resume_stuck(session: Session, *, older_than: float, limit: int = 500) -> int:
    """Re-send the next step of orders that have not moved for ``older_than`` seconds.

    A safety net for messages lost outside the broker's guarantees (the embedded
    broker has no acknowledgements; a dead-lettered step leaves its order waiting).
    Steps are idempotent, so a resend to an order that is in fact moving is harmless.
    """
    cutoff = utcnow() - dt.timedelta(seconds=older_than)
    stuck = session.scalars(
        select(Order).where(Order.stage.in_(STUCK_STAGES), Order.updated_at < cutoff)
        .order_by(Order.updated_at).limit(limit)
    ).all()
    for order in stuck:
        order.record("workflow.resumed", detail={"stage": order.stage})
        order.updated_at = utcnow()
        continue_from(session, order=order)
    session.commit()
    return len(stuck)
