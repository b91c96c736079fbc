"""Admin use cases: find orders, see why, retry or cancel them, re-send what failed.

The API, the CLI and the browser pages all call these. Each action is one use case
and one commit, taken under the order's lease, so it can never overlap a payment call
or another admin's action on the same order: a busy order is an ``OrderConflict``
("try again"), like an order in the wrong state. Every action is written on the
order's timeline with who did it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exists, func, select, tuple_
from sqlalchemy.orm import Session, selectinload

from shop.db import utcnow
from shop.exceptions import BusyError, InvariantBroken
from shop.orders import attention, lease
from shop.orders.admin.views import detail_view, summary_views
from shop.orders.flow import advance, compensate, enqueue
from shop.orders.models import Attention, FulfillmentRequest, Order
from shop.orders.queries import OrderNotFound, load
from shop.orders.refunds.models import OPEN, RefundRequest
from shop.orders.schemas import AdminOrderDetail, AdminOrderPage
from shop.orders.states import Event, OrderStatus, Stage, Step
from shop.orders.workflow.table import TaskName
from shop.payments import service as payments
from shop.payments.models import PaymentStatus
from shop.web.errors import FieldProblem, InvalidRequest

STUCK_AFTER = dt.timedelta(minutes=15)  # what the admin page calls stuck
DEFINITELY_FAILED = (PaymentStatus.FAILED, PaymentStatus.VOIDED, PaymentStatus.REFUNDED)


class OrderConflict(Exception):
    """The order is not in a state this action applies to, or another action holds it."""


def list_orders(
    session: Session, *, status: str | None = None, step: str | None = None,
    reason: str | None = None, needs_attention: bool = False, stuck: bool = False,
    fulfillment: str | None = None, limit: int = 50, cursor: str | None = None,
) -> AdminOrderPage:
    """Orders newest first, filtered, one page at a time (keyset cursor)."""
    query = select(Order).options(selectinload(Order.lines))
    if status:
        query = query.where(Order.status == status)
    if step:
        query = query.where(Order.failure_step == step)
    if reason:
        query = query.where(Order.failure_reason == reason)
    if needs_attention:
        query = query.where(exists().where(Attention.order_id == Order.id,
                                           Attention.resolved_at.is_(None)))
    if fulfillment:
        query = query.where(exists().where(FulfillmentRequest.order_id == Order.id,
                                           FulfillmentRequest.status == fulfillment))
    if stuck:
        query = query.where(Order.status.in_((OrderStatus.PENDING, OrderStatus.REQUIRES_ACTION)),
                            Order.updated_at < utcnow() - STUCK_AFTER)
    if cursor:
        created, order_id = _decode(cursor)
        query = query.where(tuple_(Order.created_at, Order.id) < tuple_(created, order_id))
    rows = list(session.scalars(query.order_by(Order.created_at.desc(), Order.id.desc())
                                .limit(limit + 1)))
    page, more = rows[:limit], len(rows) > limit
    return AdminOrderPage(orders=summary_views(session, orders=page),
                          next_cursor=_encode(page[-1]) if more else None)


def _encode(order: Order) -> str:
    raw = f"{order.created_at.isoformat()}|{order.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, order_id = raw.partition("|")
        at = dt.datetime.fromisoformat(created)
        if at.tzinfo is None:
            raise ValueError("naive time")
        return at, uuid.UUID(order_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest([FieldProblem("cursor", "not a cursor this API gave out",
                                           "invalid_cursor")]) from None


def order_detail(session: Session, *, order_id: uuid.UUID) -> AdminOrderDetail:
    order = load(session, order_id=order_id)
    if order is None:
        raise OrderNotFound(str(order_id))
    return detail_view(session, order=order)


def counts_today(session: Session, *, since: dt.datetime) -> dict[str, int]:
    """Orders placed since ``since`` (the shop's local midnight), by status."""
    rows = session.execute(select(Order.status, func.count()).where(Order.created_at >= since)
                           .group_by(Order.status))
    counts = dict.fromkeys([s.value for s in OrderStatus], 0)
    counts.update({status: int(n) for status, n in rows})
    return counts


def retry(session: Session, *, order_id: uuid.UUID, actor: str) -> Order:
    """Resume a failed order from its failed step; never charges twice.

    A payment retry opens a new attempt only when the last one definitely failed at the
    provider (declined, refused, voided); otherwise the payment step asks the provider
    about the last attempt first, and an authorization that succeeded is used.
    """
    with _held(session, order_id=order_id, actor=actor) as order:
        if order.current_stage is not Stage.FAILED:
            raise OrderConflict(f"order {order_id} is {order.status}, not failed")
        if order.failure_step == Step.INVENTORY:
            event = Event.RETRIED
        else:
            event = Event.RETRIED_PAYMENT
            last = payments.find_attempt(session, order_id=order.id,
                                         attempt=order.payment_attempt)
            if last is not None and PaymentStatus(last.status) in DEFINITELY_FAILED:
                order.payment_attempt += 1
            else:  # the order counts on that attempt again: its release is moot
                attention.resolve(session, order_id=order.id, kind=attention.Kind.RELEASE_FAILED,
                                  order=order, why="the order was retried with this payment")
        previous = {"step": order.failure_step, "reason": order.failure_reason,
                    "attempt": order.payment_attempt}
        advance(session, order=order, event=event, detail={"by": actor},
                internal=previous, actor=actor)
        return order


def retry_many(session: Session, *, step: str | None, reason: str | None, limit: int,
               actor: str) -> list[uuid.UUID]:
    """Retry failed orders matching ``step`` and ``reason``, oldest first; the ids queued."""
    query = select(Order.id).where(Order.stage == Stage.FAILED)
    if step:
        query = query.where(Order.failure_step == step)
    if reason:
        query = query.where(Order.failure_reason == reason)
    candidates = list(session.scalars(query.order_by(Order.updated_at).limit(limit)))
    session.commit()
    queued = []
    for order_id in candidates:
        try:
            retry(session, order_id=order_id, actor=actor)
        except OrderConflict:
            continue  # retried by someone else meanwhile, or busy
        queued.append(order_id)
    return queued


def cancel(session: Session, *, order_id: uuid.UUID, actor: str) -> Order:
    """Cancel an order: stock released, payment cancelled or refunded at the provider.

    Not once goods have left the shelf (a person refunds lines instead, deciding what
    comes back), nor while a line refund is open: cancelling would refund what that
    refund has reserved a second time."""
    with _held(session, order_id=order_id, actor=actor) as order:
        if order.current_stage is Stage.CANCELLED:
            raise OrderConflict(f"order {order_id} is already cancelled")
        if any(line.shipped for line in order.lines):
            raise OrderConflict(f"order {order_id} has shipped units: refund its lines "
                                "instead (POST /admin/orders/{id}/refunds)")
        if session.scalar(select(exists().where(RefundRequest.order_id == order.id,
                                                RefundRequest.status.in_(OPEN)))):
            raise OrderConflict(f"order {order_id} has a line refund under way: cancel it "
                                "once that refund has settled")
        compensate(session, order=order)
        advance(session, order=order, event=Event.CANCELLED, detail={"by": actor},
                actor=actor)
        return order


def resend(session: Session, *, order_id: uuid.UUID, actor: str, what: TaskName) -> Order:
    """Send a confirmed order's email, or its warehouse request, again (idempotent: the
    email ledger and the request's message id make a repeat a no-op)."""
    kinds = {TaskName.SEND_CONFIRMATION: attention.Kind.EMAIL_FAILED,
             TaskName.REQUEST_FULFILLMENT: attention.Kind.FULFILLMENT_FAILED}
    with _held(session, order_id=order_id, actor=actor) as order:
        if order.current_stage is not Stage.CONFIRMED:
            raise OrderConflict(f"order {order_id} is {order.status}, not confirmed")
        attention.resolve(session, order_id=order.id, kind=kinds[what])
        order.resumes = 0
        enqueue(session, task=what, order=order)
        order.record(f"admin.{what.rsplit('.', 1)[-1]}", detail={"by": actor}, actor=actor)
        return order


def resolve(session: Session, *, order_id: uuid.UUID, actor: str,
            kind: attention.Kind | None = None) -> list[str]:
    """A person marks what needs attention on the order as handled (one kind, or all).

    Every kind of item can be resolved this way; the timeline says who did it. Each
    also closes by itself when its cause is gone (and says so there).
    """
    with _held(session, order_id=order_id, actor=actor) as order:
        kinds = [item.kind for item in attention.open_items(session, order_id=order.id)
                 if kind is None or item.kind == kind.value]
        if not kinds:
            raise OrderConflict(f"order {order_id} has no open "
                                f"{kind.value if kind else 'attention'} item")
        for name in kinds:
            attention.resolve(session, order_id=order.id, kind=attention.Kind(name),
                              order=order, actor=actor, why=f"marked handled by {actor}")
        return kinds


@contextmanager
def _held(session: Session, *, order_id: uuid.UUID, actor: str) -> Iterator[Order]:
    """The order, under its lease, for one admin action; committed on success, the lease
    given back either way."""
    if load(session, order_id=order_id) is None:
        raise OrderNotFound(str(order_id))
    owner = f"admin:{uuid.uuid4().hex[:12]}"
    try:
        lease.claim(session, order_id=order_id, owner=owner)
    except BusyError:
        raise OrderConflict(f"order {order_id} is busy; try again in a moment") from None
    try:
        session.expire_all()  # the lease was taken by a statement: read the row as it is now
        order = load(session, order_id=order_id)
        if order is None:
            raise InvariantBroken("order is missing")
        yield order
        lease.clear(order)
        session.commit()
    except BaseException:
        session.rollback()
        lease.release(session, order_id=order_id, owner=owner)
        raise
