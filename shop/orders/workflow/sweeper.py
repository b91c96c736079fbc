"""The sweeper: a safety net for messages lost outside the broker's guarantees.

Beat runs it every minute. An order in flight that has not moved for five minutes
(``SHOP_STUCK_AFTER_SECONDS``; beat sweeps five times in that span) gets the steps its
table entry marks ``swept`` sent again (steps are idempotent, so a resend to an order
that is in fact moving is harmless): this covers the embedded broker, which has no
acknowledgements, a dead-lettered step, and a task stopped by a time limit. A
confirmed order whose email or warehouse request is missing is re-driven the same
way, however old it is: a paid order never drops out of sight (an admin's resend
whose email still fails, a request lost while beat was down over a weekend). It is
bounded: after ``MAX_RESUMES`` sweeps without progress, the step gives up as its task
would (``giving_up.give_up``), which fails the order or flags it for a person.
Orders whose capture outcome is unknown are reconciliation's, not the sweeper's.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Exists

from shop.db import utcnow
from shop.exceptions import BusyError
from shop.notifications.models import Notification
from shop.orders import attention
from shop.orders.flow import enqueue
from shop.orders.models import Attention, FulfillmentRequest, Order
from shop.orders.states import Stage
from shop.orders.workflow import giving_up, steps
from shop.orders.workflow.table import TaskName, swept_at

log = logging.getLogger(__name__)

MAX_RESUMES = 3
IN_FLIGHT = (Stage.PLACED, Stage.IN_STOCK, Stage.AUTHORIZED, Stage.RESERVED)


def _flagged(kind: attention.Kind) -> Exists:
    return exists().where(Attention.order_id == Order.id, Attention.kind == kind.value,
                          Attention.resolved_at.is_(None))


def resume_stuck(session: Session, *, older_than: float, limit: int = 500,
                 owner: str = "sweeper") -> int:
    """Re-send the next step of orders that have not moved for ``older_than`` seconds.

    Returns how many orders were resumed or given up.
    """
    now = utcnow()
    cutoff = now - dt.timedelta(seconds=older_than)
    stuck = session.scalars(
        select(Order).where(Order.stage.in_(IN_FLIGHT), Order.updated_at < cutoff,
                            ~_flagged(attention.Kind.PAYMENT_UNKNOWN))
        .order_by(Order.updated_at).limit(limit)).all()
    give_ups: list[tuple[uuid.UUID, TaskName]] = []
    for order in stuck:
        if order.resumes >= MAX_RESUMES:
            give_ups.extend((order.id, task) for task in swept_at(order.current_stage))
            continue
        _resume(order, now=now)
        for task in swept_at(order.current_stage):
            enqueue(session, task=task, order=order)
    redriven, more = _redrive_confirmed(session, cutoff=cutoff, now=now, limit=limit)
    give_ups.extend(more)
    session.commit()
    for order_id, task in give_ups:
        try:
            giving_up.give_up(session, task=task, order_id=order_id, owner=owner,
                          error=f"no progress after {MAX_RESUMES} resumes by the sweeper")
        except BusyError:
            log.info("order %s is busy; giving up on %s next sweep", order_id, task)
    return len(stuck) + redriven


def _resume(order: Order, *, now: dt.datetime) -> None:
    order.resumes += 1
    order.updated_at = now
    order.record("workflow.resumed", detail={"stage": order.stage})


def _redrive_confirmed(session: Session, *, cutoff: dt.datetime, now: dt.datetime,
                       limit: int) -> tuple[int, list[tuple[uuid.UUID, TaskName]]]:
    """Re-send a confirmed order's missing email or warehouse request.

    Returns how many orders were looked at, and the steps to give up on.
    """
    emailed = exists().where(Notification.order_id == Order.id,
                             Notification.kind == steps.CONFIRMATION_KIND,
                             Notification.status == "sent")
    requested = exists().where(FulfillmentRequest.order_id == Order.id)
    email_due = and_(~emailed, ~_flagged(attention.Kind.EMAIL_FAILED))
    request_due = and_(~requested, ~_flagged(attention.Kind.FULFILLMENT_FAILED))
    rows = session.execute(
        select(Order, email_due, request_due)
        .where(Order.stage == Stage.CONFIRMED, Order.updated_at < cutoff,
               or_(email_due, request_due))
        .order_by(Order.updated_at).limit(limit)).all()
    give_ups: list[tuple[uuid.UUID, TaskName]] = []
    for order, needs_email, needs_request in rows:
        due = {TaskName.SEND_CONFIRMATION: needs_email,
               TaskName.REQUEST_FULFILLMENT: needs_request}
        missing = [task for task in swept_at(Stage.CONFIRMED) if due.get(task)]
        if order.resumes >= MAX_RESUMES:
            give_ups.extend((order.id, task) for task in missing)
            continue
        _resume(order, now=now)
        for task in missing:
            enqueue(session, task=task, order=order)
    return len(rows), give_ups
