"""The order workflow's tasks: ids in, one step called, errors mapped in ``shop.tasks``."""

from __future__ import annotations

import uuid
from functools import partial

from celery import Task
from sqlalchemy.orm import Session

from shop.celery import app
from shop.config import get_settings
from shop.notifications.mailer import build_mailer
from shop.orders import steps, workflow
from shop.orders.states import Step
from shop.payments.providers import get_gateway
from shop.tasks import run_step, task_options

PAYMENT_LIMITS = {"soft_time_limit": 20, "time_limit": 25}


def _give_up(step: Step, reason: str, order_id: str, session: Session, exc: Exception) -> None:
    steps.fail_step(session, order_id=uuid.UUID(order_id), step=step, reason=reason,
                    message=f"{type(exc).__name__}: {exc}"[:500])


def _owner(task: Task) -> str:
    return f"{task.request.id}:{task.request.retries}:{uuid.uuid4().hex[:8]}"


@app.task(name="shop.orders.check_inventory", **task_options())
def check_inventory_task(self: Task, order_id: str) -> None:
    run_step(self, lambda s: steps.check_inventory(s, order_id=uuid.UUID(order_id)),
             partial(_give_up, Step.INVENTORY, "timeout", order_id))


@app.task(name="shop.orders.charge_payment", **task_options(**PAYMENT_LIMITS))
def charge_payment_task(self: Task, order_id: str) -> None:
    gateway, owner = get_gateway(), _owner(self)
    run_step(self, lambda s: steps.charge_payment(s, order_id=uuid.UUID(order_id),
                                                  gateway=gateway, owner=owner),
             partial(_give_up, Step.PAYMENT, "payment_unavailable", order_id))


@app.task(name="shop.orders.reserve_stock", **task_options())
def reserve_stock_task(self: Task, order_id: str) -> None:
    run_step(self, lambda s: steps.reserve_stock(s, order_id=uuid.UUID(order_id)),
             partial(_give_up, Step.RESERVATION, "timeout", order_id))


@app.task(name="shop.orders.capture_payment", **task_options(**PAYMENT_LIMITS))
def capture_payment_task(self: Task, order_id: str) -> None:
    gateway, owner = get_gateway(), _owner(self)
    run_step(self, lambda s: steps.capture_payment(s, order_id=uuid.UUID(order_id),
                                                   gateway=gateway, owner=owner),
             partial(_give_up, Step.PAYMENT, "payment_unavailable", order_id))


@app.task(name="shop.orders.send_confirmation", **task_options())
def send_confirmation_task(self: Task, order_id: str) -> None:
    settings = get_settings()
    run_step(self, lambda s: steps.send_confirmation(
        s, order_id=uuid.UUID(order_id), mailer=build_mailer(settings),
        sender=settings.mail_from), partial(_note_gave_up, "email.confirmation_failed", order_id))


@app.task(name="shop.orders.request_fulfillment", **task_options())
def request_fulfillment_task(self: Task, order_id: str) -> None:
    run_step(self, lambda s: steps.request_fulfillment(s, order_id=uuid.UUID(order_id)),
             partial(_note_gave_up, "fulfillment.request_failed", order_id))


def _note_gave_up(event: str, order_id: str, session: Session, exc: Exception) -> None:
    steps.note_problem(session, order_id=uuid.UUID(order_id), type_=event,
                       message=f"{type(exc).__name__}: {exc}"[:500])


STUCK_AFTER_SECONDS = 300.0


@app.task(name="shop.orders.resume_stuck_orders", **task_options())
def resume_stuck_orders_task(self: Task) -> None:
    run_step(self, lambda s: _resume(s), lambda _s, _e: None)


def _resume(session: Session) -> None:
    workflow.resume_stuck(session, older_than=STUCK_AFTER_SECONDS)
