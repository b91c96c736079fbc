"""The order workflow's tasks: ids in, one step called, errors mapped by ``run_step``."""

from __future__ import annotations

import logging
import uuid
from functools import partial

from celery import Task
from sqlalchemy.orm import Session

from shop.celery import app
from shop.config import get_settings
from shop.notifications.mailer import MailTransientError, build_mailer
from shop.orders import giving_up, payment_events, reconcile, steps, sweeper
from shop.orders.workflow import TaskName
from shop.payments.providers import get_gateway
from shop.task_runner import run_step, task_options

log = logging.getLogger(__name__)

PAYMENT_LIMITS = {"soft_time_limit": steps.PAYMENT_SOFT_LIMIT,
                  "time_limit": steps.PAYMENT_HARD_LIMIT}


def _owner(task: Task) -> str:
    """Who holds an order's lease: this run of this message (fits ``lease_owner``)."""
    return f"{task.request.id}:{task.request.retries}:{uuid.uuid4().hex[:8]}"[:64]


def _give_up(task: Task, name: TaskName, order_id: str, session: Session, exc: Exception,
             attempt: int | None = None) -> None:
    giving_up.give_up(session, task=name, order_id=uuid.UUID(order_id), owner=_owner(task),
                  error=f"{type(exc).__name__}: {exc}"[:500], attempt=attempt)


@app.task(name=TaskName.CHECK_INVENTORY, **task_options())
def check_inventory_task(self: Task, order_id: str) -> None:
    run_step(self, lambda s: steps.check_inventory(s, order_id=uuid.UUID(order_id)),
             partial(_give_up, self, TaskName.CHECK_INVENTORY, order_id))


@app.task(name=TaskName.CHARGE_PAYMENT, **task_options(**PAYMENT_LIMITS))
def charge_payment_task(self: Task, order_id: str) -> None:
    gateway, owner = get_gateway(), _owner(self)
    run_step(self, lambda s: steps.charge_payment(s, order_id=uuid.UUID(order_id),
                                                  gateway=gateway, owner=owner),
             partial(_give_up, self, TaskName.CHARGE_PAYMENT, order_id))


@app.task(name=TaskName.RESERVE_STOCK, **task_options())
def reserve_stock_task(self: Task, order_id: str) -> None:
    run_step(self, lambda s: steps.reserve_stock(s, order_id=uuid.UUID(order_id)),
             partial(_give_up, self, TaskName.RESERVE_STOCK, order_id))


@app.task(name=TaskName.CAPTURE_PAYMENT, **task_options(**PAYMENT_LIMITS))
def capture_payment_task(self: Task, order_id: str) -> None:
    gateway, owner = get_gateway(), _owner(self)
    run_step(self, lambda s: steps.capture_payment(s, order_id=uuid.UUID(order_id),
                                                   gateway=gateway, owner=owner),
             partial(_give_up, self, TaskName.CAPTURE_PAYMENT, order_id))


def _give_up_email(task: Task, order_id: str, session: Session, exc: Exception) -> None:
    """A mail server that still answers "try later" after every attempt is an outage,
    not a verdict: the sweeper sends the email again later (and flags the order after
    its own tries); a refusal for good (5xx) or anything else is flagged now."""
    if isinstance(exc, MailTransientError):
        log.warning("confirmation email for %s still refused (%s): left to the sweeper",
                    order_id, exc)
        return
    _give_up(task, TaskName.SEND_CONFIRMATION, order_id, session, exc)


@app.task(name=TaskName.SEND_CONFIRMATION, **task_options())
def send_confirmation_task(self: Task, order_id: str) -> None:
    settings = get_settings()
    run_step(self, lambda s: steps.send_confirmation(
        s, order_id=uuid.UUID(order_id), mailer=build_mailer(settings),
        sender=settings.mail_from), partial(_give_up_email, self, order_id))


@app.task(name=TaskName.REQUEST_FULFILLMENT, **task_options())
def request_fulfillment_task(self: Task, order_id: str) -> None:
    run_step(self, lambda s: steps.request_fulfillment(s, order_id=uuid.UUID(order_id)),
             partial(_give_up, self, TaskName.REQUEST_FULFILLMENT, order_id))


@app.task(name=TaskName.RELEASE_PAYMENT, **task_options(**PAYMENT_LIMITS))
def release_payment_task(self: Task, order_id: str, attempt: int) -> None:
    gateway, owner = get_gateway(), _owner(self)
    run_step(self, lambda s: steps.release_payment(
        s, order_id=uuid.UUID(order_id), attempt=attempt, gateway=gateway, owner=owner),
        partial(_give_up, self, TaskName.RELEASE_PAYMENT, order_id, attempt=attempt))


@app.task(name=TaskName.RESUME_STUCK, **task_options())
def resume_stuck_orders_task(self: Task) -> None:
    older_than = get_settings().stuck_after_seconds
    run_step(self, lambda s: sweeper.resume_stuck(s, older_than=older_than),
             lambda _s, _e: None)


@app.task(name=TaskName.RECONCILE, **task_options(soft_time_limit=240, time_limit=270))
def reconcile_payments_task(self: Task) -> None:
    gateway = get_gateway()
    run_step(self, lambda s: reconcile.reconcile(s, gateway=gateway, owner=_owner(self)),
             lambda _s, _e: None)


@app.task(name=TaskName.HANDLE_PAYMENT_EVENT, **task_options(**PAYMENT_LIMITS))
def handle_payment_event_task(self: Task, event_id: str) -> None:
    gateway, owner = get_gateway(), _owner(self)
    run_step(self, lambda s: payment_events.handle(s, event_id=event_id, gateway=gateway,
                                                   owner=owner),
             lambda s, exc: payment_events.defer(s, event_id=event_id, error=str(exc)))


@app.task(name=TaskName.EXPIRE_AUTHENTICATIONS, **task_options(soft_time_limit=240,
                                                                time_limit=270))
def expire_authentications_task(self: Task) -> None:
    gateway, timeout = get_gateway(), get_settings().requires_action_timeout
    run_step(self, lambda s: payment_events.expire_authentications(
        s, gateway=gateway, owner=_owner(self), older_than=timeout), lambda _s, _e: None)
