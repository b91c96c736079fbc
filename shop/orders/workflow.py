"""The order workflow in one room: its tasks, what follows each stage, and how an order
is undone.

    check_inventory -> charge_payment -> reserve_stock -> capture_payment
        -> { send_confirmation, request_fulfillment }

The canvas is a chain into a group, written as data (``NEXT_AFTER``). Unlike a Celery
``chain``, the next message is written to the outbox in the same transaction as the
state change that earns it. So a step re-run after a crash finds the order already
moved and sends nothing, a duplicate delivery cannot fork the chain, and a crash
between commit and publish loses nothing.

Every step is a use case (``steps.py``): it reloads the order, does nothing unless the
order is at its stage, and commits once at the end. Undoing an order is one function,
``compensate``; ``fail`` is compensation plus the failing transition.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.orm import Session, joinedload

from shop import metrics
from shop.messaging.service import enqueue_event, enqueue_task
from shop.orders.models import FulfillmentRequest, Order, OrderLine, Product
from shop.orders.states import Event, Stage, Step, customer_message
from shop.payments import service as payments

# Messages to the warehouse (a durable topic exchange; see CONTRACT.md).
EVENTS_EXCHANGE = "shop.events"
FULFILLMENT_ROUTING_KEY = "order.fulfillment_requested"
FULFILLMENT_CANCELLED_ROUTING_KEY = "order.fulfillment_cancelled"


class TaskName(StrEnum):
    """Every task of the order workflow: the one place its wire name is spelled."""

    CHECK_INVENTORY = "shop.orders.check_inventory"
    CHARGE_PAYMENT = "shop.orders.charge_payment"
    RESERVE_STOCK = "shop.orders.reserve_stock"
    CAPTURE_PAYMENT = "shop.orders.capture_payment"
    SEND_CONFIRMATION = "shop.orders.send_confirmation"
    REQUEST_FULFILLMENT = "shop.orders.request_fulfillment"
    # Compensation's provider half; the 0.1 wire name is kept so queued messages still run.
    RELEASE_PAYMENT = "shop.payments.void_payment"
    RESUME_STUCK = "shop.orders.resume_stuck_orders"
    RECONCILE = "shop.orders.reconcile_payments"
    HANDLE_PAYMENT_EVENT = "shop.orders.handle_payment_event"
    EXPIRE_AUTHENTICATIONS = "shop.orders.expire_authentications"

    @property
    def queue(self) -> str:
        """The queue it runs on: payment calls, emails and the rest apart."""
        return _QUEUE.get(self, "orders")


_QUEUE: dict[TaskName, str] = {
    TaskName.CHARGE_PAYMENT: "payments",
    TaskName.CAPTURE_PAYMENT: "payments",
    TaskName.RELEASE_PAYMENT: "payments",
    TaskName.RECONCILE: "payments",
    TaskName.HANDLE_PAYMENT_EVENT: "payments",
    TaskName.EXPIRE_AUTHENTICATIONS: "payments",
    TaskName.SEND_CONFIRMATION: "notifications",
}

NEXT_AFTER: dict[Stage, tuple[TaskName, ...]] = {
    Stage.PLACED: (TaskName.CHECK_INVENTORY,),
    Stage.IN_STOCK: (TaskName.CHARGE_PAYMENT,),
    Stage.AUTHORIZED: (TaskName.RESERVE_STOCK,),
    Stage.RESERVED: (TaskName.CAPTURE_PAYMENT,),
    Stage.CONFIRMED: (TaskName.SEND_CONFIRMATION, TaskName.REQUEST_FULFILLMENT),
}


def continue_from(session: Session, *, order: Order) -> None:
    """Enqueue (in the caller's transaction) the steps that follow the order's stage."""
    for task in NEXT_AFTER.get(order.current_stage, ()):
        enqueue(session, task=task, order=order)


def enqueue(session: Session, *, task: TaskName, order: Order, delay: float = 0) -> None:
    enqueue_task(session, name=task, kwargs={"order_id": str(order.id)}, delay=delay)


def start(session: Session, *, order: Order) -> None:
    """Begin the workflow of a new order (called inside ``place_order``'s transaction)."""
    continue_from(session, order=order)


def advance(
    session: Session, *, order: Order, event: Event,
    failure: tuple[Step, str, str] | None = None, detail: Mapping[str, object] | None = None,
    internal: Mapping[str, object] | None = None, actor: str | None = None,
) -> None:
    """Apply ``event`` and enqueue what follows; the caller commits."""
    order.apply(event, failure=failure, detail=dict(detail or {}),
                internal=dict(internal) if internal else None, actor=actor)
    continue_from(session, order=order)
    _count(session, stage=order.current_stage, failure=failure)


def _count(session: Session, *, stage: Stage,
           failure: tuple[Step, str, str] | None) -> None:
    if stage is Stage.CONFIRMED:
        metrics.on_commit(session, metrics.ORDERS_CONFIRMED.inc)
    elif stage is Stage.CANCELLED:
        metrics.on_commit(session, metrics.ORDERS_CANCELLED.inc)
    elif stage is Stage.FAILED and failure is not None:
        counter = metrics.ORDERS_FAILED.labels(step=failure[0].value, reason=failure[1])
        metrics.on_commit(session, counter.inc)


def load(session: Session, *, order_id: uuid.UUID, lines: bool = False,
         products: bool = False, lock: bool = False) -> Order | None:
    """The order, or None; with its lines (and their products) in the same statement;
    ``lock`` holds its row until the caller's commit."""
    query = select(Order).where(Order.id == order_id)
    if lock:
        query = query.with_for_update(of=Order)
    if products:
        query = query.options(joinedload(Order.lines).joinedload(OrderLine.product))
    elif lines:
        query = query.options(joinedload(Order.lines))
    return session.scalars(query).unique().one_or_none()


def compensate(session: Session, *, order: Order) -> None:
    """Undo what the order holds: give back its reserved stock, release its payment and
    call off its shipment.

    The one place an order is undone (reservation shortfall, capture failure, giving
    up, admin cancel, the provider cancelling). It joins the caller's transaction,
    which also applies the failing or cancelling transition. Safe to repeat: stock is
    released once (``stock_reserved``), and the payment release is a task that asks the
    provider first and skips an attempt that holds nothing.
    """
    if order.stock_reserved:
        release_lines(session, order=order)
        order.stock_reserved = False
    payment = payments.find_attempt(session, order_id=order.id, attempt=order.payment_attempt)
    if payment is not None and payments.unsettled(payment):
        enqueue_task(session, name=TaskName.RELEASE_PAYMENT,
                     kwargs={"order_id": str(order.id), "attempt": order.payment_attempt})
    if order.current_stage is Stage.CONFIRMED:
        withdraw_fulfillment(session, order=order)


def withdraw_fulfillment(session: Session, *, order: Order) -> None:
    """Tell the warehouse that a requested shipment is off, once (the request's status).

    The order's row is locked first: a request being recorded concurrently either
    commits before this reads the requests, or sees the order no longer confirmed.
    """
    load(session, order_id=order.id, lock=True)
    request_id = session.execute(
        update(FulfillmentRequest)
        .where(FulfillmentRequest.order_id == order.id,
               FulfillmentRequest.status == "requested")
        .values(status="cancelled").returning(FulfillmentRequest.id)).scalar()
    if request_id is None:
        return
    message_id = uuid.uuid5(request_id, "cancelled")
    enqueue_event(session, exchange=EVENTS_EXCHANGE,
                  routing_key=FULFILLMENT_CANCELLED_ROUTING_KEY, message_id=message_id,
                  body={"message_id": str(message_id), "order_id": str(order.id),
                        "request_message_id": str(request_id)})
    order.record("fulfillment.cancelled", detail={"message_id": str(message_id)})


def fail(
    session: Session, *, order: Order, step: Step, reason: str,
    provider_text: str | None = None, error: str | None = None,
    event: Event = Event.STEP_FAILED, detail: Mapping[str, object] | None = None,
) -> None:
    """Compensate and move the order to ``failed``; the caller commits.

    The customer reads a message for ``reason``; ``error`` is kept for admins and logs.
    """
    compensate(session, order=order)
    advance(session, order=order, event=event, detail=detail,
            failure=(step, reason, customer_message(reason, provider_text)),
            internal={"error": error} if error else None)


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
    """Give back the order's reserved units, in SKU order (only ``compensate`` calls it)."""
    for line in sorted(order.lines, key=lambda x: x.sku):
        session.execute(
            update(Product).where(Product.sku == line.sku)
            .values(reserved=Product.reserved - line.quantity)
        )
