"""Payment tasks that stand alone: releasing an attempt's authorization."""

from __future__ import annotations

import logging
import uuid

from celery import Task
from sqlalchemy.orm import Session

from shop.celery import app
from shop.payments import service
from shop.payments.gateway import PaymentGateway
from shop.payments.providers import get_gateway
from shop.tasks import run_step, task_options

log = logging.getLogger(__name__)


@app.task(name="shop.payments.void_payment", **task_options(soft_time_limit=20, time_limit=25))
def void_payment_task(self: Task, order_id: str, attempt: int) -> None:
    gateway = get_gateway()
    run_step(self, lambda s: _void(s, order_id, attempt, gateway), _alert)


def _void(session: Session, order_id: str, attempt: int, gateway: PaymentGateway) -> None:
    service.void(session, order_id=uuid.UUID(order_id), attempt=attempt, gateway=gateway)


def _alert(_session: Session, exc: Exception) -> None:
    log.error("could not release an authorization: %s", exc)
