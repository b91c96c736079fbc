"""What every shop task shares: sessions, delivery bounds, retries with backoff.

A task is thin: it turns ids into a call of one step and maps errors to Celery's
retry or dead-letter machinery. Errors handled here::

    transient (retry with backoff, then fail the step):
        PaymentTransientError, MailTransientError, OperationalError
    busy (another copy is at work: retry soon, uncounted against the step):
        OrderBusy, NotificationInProgress, StaleDataError
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Reject
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from shop.config import get_settings
from shop.db import session_scope
from shop.messaging.service import count_delivery
from shop.notifications.mailer import MailTransientError
from shop.notifications.service import NotificationInProgress
from shop.orders.steps import OrderBusy
from shop.payments.gateway import PaymentTransientError

log = logging.getLogger(__name__)

TRANSIENT = (PaymentTransientError, MailTransientError, OperationalError)
BUSY = (OrderBusy, NotificationInProgress, StaleDataError)
BUSY_DELAY = 1.0
MAX_BUSY_RETRIES = 300


def backoff(retries: int) -> float:
    """Seconds before retry number ``retries + 1``: doubling, capped, with jitter."""
    settings = get_settings()
    delay = min(settings.retry_max_delay, settings.retry_base_delay * 2**retries)
    return float(delay * random.uniform(0.5, 1.0))


def busy_delay(retries: int) -> float:
    """Seconds before looking again at an order another copy holds: soon, then less often."""
    return float(min(BUSY_DELAY * 1.5**retries, 10.0) * random.uniform(0.5, 1.0))


def run_step(task: Task, work: Callable[[Session], None],
             on_exhausted: Callable[[Session, Exception], None]) -> None:
    """Run ``work`` in a fresh session, retrying the way the module docstring says.

    Counts live in the database, keyed by the message id, so they survive redelivery:
    starts of one attempt (a task that kills its worker every time is dead-lettered)
    and transient failures (after ``SHOP_RETRY_MAX_ATTEMPTS`` the step fails).
    """
    request = task.request
    if _count(task, f"{request.id}:{request.retries}") > get_settings().max_deliveries:
        log.error("%s[%s] keeps losing its worker; dead-lettering", task.name, request.id)
        with session_scope() as session:
            on_exhausted(session, RuntimeError("the task kept failing its worker"))
        raise Reject("too many deliveries", requeue=False)
    try:
        with session_scope() as session:
            work(session)
    except BUSY as exc:
        if request.retries >= MAX_BUSY_RETRIES:
            raise
        raise task.retry(exc=exc, countdown=busy_delay(request.retries)) from exc
    except TRANSIENT as exc:
        failures = _count(task, f"{request.id}:failures")
        if failures >= get_settings().retry_max_attempts:
            log.warning("%s[%s] gave up after %d attempts: %s", task.name, request.id,
                        failures, exc)
            with session_scope() as session:
                on_exhausted(session, exc)
            return
        raise task.retry(exc=exc, countdown=backoff(failures - 1)) from exc


def _count(task: Task, key: str) -> int:
    with session_scope() as session:
        return count_delivery(session, message_id=key, task_name=str(task.name))


def task_options(**extra: Any) -> dict[str, Any]:
    """Options every shop task is declared with.

    ``max_retries=None`` on the task (not on ``retry()``, where None means "the task's
    default of 3") leaves bounding to ``run_step``'s own counters.
    """
    return {"bind": True, "acks_late": True, "reject_on_worker_lost": True,
            "ignore_result": True, "max_retries": None, **extra}
