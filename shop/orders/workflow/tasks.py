"""The order workflow's tasks: ids in, one step called, errors mapped by ``run_step``.

Each task's name, queue, limits and give-up come from its entry in ``table.STEPS``;
``options`` turns an entry into the task's declaration. They are ``shared_task``s:
the Celery app (``shop.celery``) finds them, and nothing here imports it.
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

from celery import Task, shared_task
from sqlalchemy.orm import Session

from shop.config import get_settings
from shop.messaging.runner import run_step, task_options
from shop.notifications.mailer import build_mailer
from shop.orders.provider import converge
from shop.orders.workflow import giving_up, steps, sweeper
from shop.orders.workflow.table import SPEC, TaskName
from shop.payments.providers import get_gateway


def options(task: TaskName) -> dict[str, Any]:
    """A task's declaration, from its entry in the step table."""
    limits = SPEC[task].limits
    return {"name": task.value,
            **task_options(soft_time_limit=limits.soft, time_limit=limits.hard)}


def owner(task: Task) -> str:
    """Who holds an order's lease: this run of this message (fits ``lease_owner``)."""
    return f"{task.request.id}:{task.request.retries}:{uuid.uuid4().hex[:8]}"[:64]


def _give_up(task: Task, name: TaskName, order_id: str, session: Session, exc: Exception,
             attempt: int | None = None) -> None:
    giving_up.give_up(session, task=name, order_id=uuid.UUID(order_id), owner=owner(task),
                      error=exc, attempt=attempt)


def _run(task: Task, name: TaskName, order_id: str, work: Any) -> None:
    run_step(task, work, partial(_give_up, task, name, order_id))


@shared_task(**options(TaskName.CHECK_INVENTORY))
def check_inventory_task(self: Task, order_id: str) -> None:
    _run(self, TaskName.CHECK_INVENTORY, order_id,
         lambda s: steps.check_inventory(s, order_id=uuid.UUID(order_id)))


@shared_task(**options(TaskName.CHARGE_PAYMENT))
def charge_payment_task(self: Task, order_id: str) -> None:
    gateway, lease_owner = get_gateway(), owner(self)
    _run(self, TaskName.CHARGE_PAYMENT, order_id,
         lambda s: steps.charge_payment(s, order_id=uuid.UUID(order_id), gateway=gateway,
                                        owner=lease_owner))


@shared_task(**options(TaskName.RESERVE_STOCK))
def reserve_stock_task(self: Task, order_id: str) -> None:
    _run(self, TaskName.RESERVE_STOCK, order_id,
         lambda s: steps.reserve_stock(s, order_id=uuid.UUID(order_id)))


@shared_task(**options(TaskName.CAPTURE_PAYMENT))
def capture_payment_task(self: Task, order_id: str) -> None:
    gateway, lease_owner = get_gateway(), owner(self)
    _run(self, TaskName.CAPTURE_PAYMENT, order_id,
         lambda s: steps.capture_payment(s, order_id=uuid.UUID(order_id), gateway=gateway,
                                         owner=lease_owner))


@shared_task(**options(TaskName.SEND_CONFIRMATION))
def send_confirmation_task(self: Task, order_id: str) -> None:
    settings = get_settings()
    _run(self, TaskName.SEND_CONFIRMATION, order_id,
         lambda s: steps.send_confirmation(s, order_id=uuid.UUID(order_id),
                                           mailer=build_mailer(settings),
                                           sender=settings.mail_from))


@shared_task(**options(TaskName.REQUEST_FULFILLMENT))
def request_fulfillment_task(self: Task, order_id: str) -> None:
    _run(self, TaskName.REQUEST_FULFILLMENT, order_id,
         lambda s: steps.request_fulfillment(s, order_id=uuid.UUID(order_id)))


@shared_task(**options(TaskName.RELEASE_PAYMENT))
def release_payment_task(self: Task, order_id: str, attempt: int) -> None:
    gateway, lease_owner = get_gateway(), owner(self)
    run_step(self, lambda s: converge.release(
        s, order_id=uuid.UUID(order_id), attempt=attempt, gateway=gateway, owner=lease_owner),
        partial(_give_up, self, TaskName.RELEASE_PAYMENT, order_id, attempt=attempt))


@shared_task(**options(TaskName.RESUME_STUCK))
def resume_stuck_orders_task(self: Task) -> None:
    older_than = get_settings().stuck_after_seconds
    run_step(self, lambda s: sweeper.resume_stuck(s, older_than=older_than),
             lambda _s, _e: None)
