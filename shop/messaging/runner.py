"""What every shop task shares: a fresh session, bounded retries, delivery bounds.

A task is thin: it turns ids into a call of one step and leaves errors to
``run_step``, which maps them by their base class (``shop.exceptions``)::

    BusyError, StaleDataError             another copy is at work: retry soon, uncounted
    SlowDown                              asked to wait (a 429, pacing): retry after it,
                                          uncounted
    the database went away                retry with backoff, uncounted (a dropped
    (``shop.db.is_disconnect``)           connection, a failover to the standby: the
                                          step's commit did not land, or its copy finds
                                          the work done)
    TransientError, OperationalError,     retry with backoff; after SHOP_RETRY_MAX_ATTEMPTS
    SoftTimeLimitExceeded, anything else  failures, the step gives up
    PermanentError                        the step gives up at once

"Gives up" calls the task's ``on_exhausted``, which fails the order or flags it for a
person; it never leaves the order waiting silently. A hard time limit puts the message
back on the queue (``task_acks_on_timeout=False``) and counts as one failure. An
exception that escapes even the give-up (a malformed message: no such order id) is
rejected without requeue (``task_acks_on_failure=False``) into the dead-letter queue,
and counted in ``shop_dead_letters``.
Counts live in the database, keyed by the message id, so they survive redelivery;
a redelivered message's starts are counted too, so a task that kills its worker
every time is dead-lettered after SHOP_MAX_DELIVERIES starts.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from billiard.einfo import ExceptionInfo
from celery import Task
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from shop import metrics
from shop.config import get_settings
from shop.db import is_disconnect, session_scope
from shop.exceptions import BusyError, PermanentError, SlowDown, TransientError
from shop.messaging import broker
from shop.messaging.service import count_delivery, delivery_count, mark_consumed

log = logging.getLogger(__name__)

TRANSIENT = (TransientError, OperationalError, SoftTimeLimitExceeded)
BUSY = (BusyError, StaleDataError)
BUSY_DELAY = 1.0
MAX_BUSY_RETRIES = 300

GiveUp = Callable[[Session, Exception], None]


def backoff(retries: int) -> float:
    """Seconds before retry number ``retries + 1``: doubling, capped, with jitter."""
    settings = get_settings()
    delay = min(settings.retry_max_delay, settings.retry_base_delay * 2**retries)
    return float(delay * random.uniform(0.5, 1.0))


def busy_delay(retries: int) -> float:
    """Seconds before looking again at an order another copy holds: soon, then less often."""
    return float(min(BUSY_DELAY * 1.5**retries, 10.0) * random.uniform(0.5, 1.0))


def run_step(task: Task, work: Callable[[Session], object], on_exhausted: GiveUp) -> None:
    """Run ``work`` in a fresh session, retrying the way the module docstring says."""
    started = time.perf_counter()
    try:
        _run(task, work, on_exhausted)
    except Retry:
        metrics.TASK_RETRIES.labels(task=str(task.name), why=_why()).inc()
        raise
    except Reject:
        metrics.DEAD_LETTERS.labels(task=str(task.name)).inc()
        raise
    finally:
        took = time.perf_counter() - started
        metrics.STEP_SECONDS.labels(task=str(task.name)).observe(took)
        log.info("%s ran in %.0f ms", task.name, took * 1000)


def _why() -> str:
    exc = sys.exc_info()[1]
    cause = exc.__cause__ if exc is not None else None
    if isinstance(cause, BUSY):
        return "busy"
    return "slow_down" if isinstance(cause, SlowDown) else "failure"


def _run(task: Task, work: Callable[[Session], object], on_exhausted: GiveUp) -> None:
    request = task.request
    if (getattr(request, "delivery_info", None) or {}).get("redelivered"):
        if _count(task, f"{request.id}:{request.retries}") > get_settings().max_deliveries:
            log.error("%s[%s] keeps losing its worker; dead-lettering", task.name, request.id)
            _give_up(task, on_exhausted, RuntimeError("the task kept failing its worker"))
            raise Reject("too many deliveries", requeue=False)
        if _peek(task, f"{request.id}:failures") >= get_settings().retry_max_attempts:
            _give_up(task, on_exhausted, RuntimeError("the task ran out of time too often"))
            return
    try:
        with session_scope() as session:
            mark_consumed(session, message_id=str(request.id))
            work(session)
    except BUSY as exc:
        if request.retries >= MAX_BUSY_RETRIES:
            raise
        raise task.retry(exc=exc, countdown=busy_delay(request.retries)) from exc
    except SlowDown as exc:  # paced or rate-limited: not a failure, try after the wait
        if request.retries >= MAX_BUSY_RETRIES:
            raise
        delay = exc.retry_after * random.uniform(1.0, 1.5)
        raise task.retry(exc=exc, countdown=delay) from exc
    except PermanentError as exc:
        _give_up(task, on_exhausted, exc)
    except Exception as exc:
        if not isinstance(exc, TRANSIENT) and not is_disconnect(exc):
            log.exception("%s[%s] failed unexpectedly", task.name, request.id)
        if is_disconnect(exc):  # the database went away (a failover): not the step's doing
            if request.retries >= MAX_BUSY_RETRIES:
                raise
            raise task.retry(exc=exc, countdown=backoff(min(request.retries, 5))) from exc
        try:
            failures = _count(task, f"{request.id}:failures")
        except OperationalError:  # the database is gone too: retry later, uncounted
            if request.retries >= MAX_BUSY_RETRIES:
                raise
            raise task.retry(exc=exc, countdown=backoff(min(request.retries, 5))) from exc
        if failures >= get_settings().retry_max_attempts:
            _give_up(task, on_exhausted, exc)
            return
        raise task.retry(exc=exc, countdown=backoff(failures - 1)) from exc


def _give_up(task: Task, on_exhausted: GiveUp, exc: Exception) -> None:
    log.warning("%s[%s] gives up: %s", task.name, task.request.id, exc)
    try:
        with session_scope() as session:
            on_exhausted(session, exc)
    except BUSY as busy:  # the order's lease is held: decide once the call in flight ends
        raise task.retry(exc=busy, countdown=busy_delay(task.request.retries)) from busy


def _count(task: Task, key: str) -> int:
    with session_scope() as session:
        return count_delivery(session, message_id=key, task_name=str(task.name))


def _peek(task: Task, key: str) -> int:
    with session_scope() as session:
        return delivery_count(session, message_id=key)


class ShopTask(Task):  # type: ignore[misc]
    """Counts a hard time limit as one failure of the step (Celery then requeues it), and
    any other failure as a dead letter (Celery then rejects it without requeue)."""

    def retry(self, *args: Any, countdown: float | None = None, **options: Any) -> Any:
        """Celery's retry, with a countdown the broker can keep (``broker.countdown``:
        native delayed delivery on quorum queues counts whole seconds from one)."""
        if countdown is not None:
            countdown = broker.countdown(get_settings(), countdown)
        return super().retry(*args, countdown=countdown, **options)

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any,
                   einfo: ExceptionInfo) -> None:
        if isinstance(exc, TimeLimitExceeded):
            with session_scope() as session:
                count_delivery(session, message_id=f"{task_id}:failures", task_name=self.name)
            return
        log.critical("%s[%s] failed for good: dead-lettering it", self.name, task_id)
        metrics.DEAD_LETTERS.labels(task=str(self.name)).inc()


def task_options(**extra: Any) -> dict[str, Any]:
    """Options every shop task is declared with.

    ``max_retries=None`` on the task (not on ``retry()``, where None means "the task's
    default of 3") leaves bounding to ``run_step``'s own counters.
    """
    return {"bind": True, "base": ShopTask, "acks_late": True, "reject_on_worker_lost": True,
            "ignore_result": True, "max_retries": None, **extra}
