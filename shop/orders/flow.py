"""How an order moves along the canvas (``workflow/table.py``), and how it is undone.

The next message is written to the outbox in the same transaction as the state
change that earns it. So a step re-run after a crash finds the order already moved
and sends nothing, a duplicate delivery cannot fork the chain, and a crash between
commit and publish loses nothing. Undoing an order is one function, ``compensate``;
``fail`` is compensation plus the failing transition.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from sqlalchemy import update
from sqlalchemy.orm import Session

from shop import metrics
from shop.messaging.broker import EVENTS_EXCHANGE, FULFILLMENT_CANCELLED_ROUTING_KEY
from shop.messaging.service import enqueue_event, enqueue_task
from shop.orders.models import FulfillmentRequest, Order
from shop.orders.queries import load
from shop.orders.states import Event, Stage, Step, customer_message
from shop.orders.stock import release_lines
from shop.orders.workflow.table import NEXT_AFTER, TaskName
from shop.payments import service as payments


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
               FulfillmentRequest.status.in_(("requested", "partially_shipped")))
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
