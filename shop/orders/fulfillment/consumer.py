"""The worker's consumer of the warehouse's answers (queue ``shop.warehouse``).

Not a new kind of process: a Celery consumer step (``WarehouseConsumer``, added to the
worker's consumer blueprint by ``shop.celery``) consumes the queue beside the tasks, on
its own channel. Each delivery is:

    parsed strictly (``messages.parse``)   unreadable: dead-lettered with the reason
    applied once (``service.apply``)       refused: dead-lettered with the reason
    acknowledged after the commit          a crash before it: redelivered, and the
                                           ledger makes the copy a no-op
    on any other error                     put back after a short pause; after
                                           SHOP_MAX_DELIVERIES failures, dead-lettered

Dead-lettering publishes the message, as it came, to ``shop.dlx`` with its own routing
key and the reason in the ``x-shop-reason`` header, then acknowledges it (so it lands
in ``shop.dead_letter`` where a person reads why); if that publish fails, it is rejected
without requeue, and the queue's own dead-lettering takes it there without the header.
Only on AMQP: the embedded brokers have no topic exchanges.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from kombu.messaging import Consumer

from shop import logs, metrics
from shop.config import get_settings
from shop.db import session_scope
from shop.messaging.broker import DEAD_LETTER_EXCHANGE, WAREHOUSE_QUEUE_NAME, warehouse_queue
from shop.messaging.service import count_delivery
from shop.orders.fulfillment import service
from shop.orders.fulfillment.messages import KINDS, Invalid, parse

log = logging.getLogger(__name__)

REASON_HEADER = "x-shop-reason"
PREFETCH = 10
MAX_PAUSE = 2.0

Message = Any  # a kombu message (kombu is untyped)
DeadLetter = Callable[[Message, str], None]


def handle(message: Message, *, dead_letter: DeadLetter) -> str:
    """Parse, apply and settle one delivery; what became of it."""
    routing_key = str((message.delivery_info or {}).get("routing_key", ""))
    message_id = (message.properties or {}).get("message_id")
    kind = routing_key if routing_key in KINDS else "unknown"  # (a bounded metric label)
    try:
        parsed = parse(routing_key=routing_key, body=message.body, message_id=message_id)
    except Invalid as exc:
        return _refuse(message, kind=kind, reason=exc.reason, dead_letter=dead_letter)
    with logs.bound(order_id=str(parsed.order_id)):
        try:
            with session_scope() as session:
                outcome = service.apply(session, message=parsed)
        except service.Rejected as exc:
            return _refuse(message, kind=kind, reason=exc.reason, dead_letter=dead_letter)
        except Exception as exc:
            return _failed(message, kind=kind, message_id=parsed.message_id, error=exc,
                           dead_letter=dead_letter)
        message.ack()
        log.info("warehouse %s %s: %s", routing_key, parsed.message_id, outcome)
        return outcome


def _refuse(message: Message, *, kind: str, reason: str, dead_letter: DeadLetter) -> str:
    log.error("warehouse message %s (%s) dead-lettered: %s",
              (message.properties or {}).get("message_id"), kind, reason)
    dead_letter(message, reason)
    metrics.WAREHOUSE_MESSAGES.labels(kind=kind, outcome="dead_letter").inc()
    metrics.DEAD_LETTERS.labels(task="shop.warehouse").inc()
    return "dead_letter"


def _failed(message: Message, *, kind: str, message_id: str, error: Exception,
            dead_letter: DeadLetter) -> str:
    """Put the message back after a pause; dead-letter it once it failed too often."""
    log.warning("warehouse message %s failed: %s", message_id, error, exc_info=True)
    try:
        with session_scope() as session:
            failures = count_delivery(session, message_id=f"warehouse:{message_id}:failures",
                                      task_name="shop.warehouse")
    except Exception:  # the database is down too: try again later, uncounted
        failures = 1
    if failures >= get_settings().max_deliveries:
        reason = f"failed {failures} times: {type(error).__name__}: {error}"[:1000]
        return _refuse(message, kind=kind, reason=reason, dead_letter=dead_letter)
    time.sleep(min(MAX_PAUSE, 0.2 * failures))
    message.requeue()
    metrics.WAREHOUSE_MESSAGES.labels(kind=kind, outcome="retry").inc()
    return "retry"


def publish_dead_letter(producer_pool: Any) -> DeadLetter:
    """Dead-lettering through one of the app's producers (its own connection)."""

    def dead_letter(message: Message, reason: str) -> None:
        properties = message.properties or {}
        headers = {**(message.headers or {}), REASON_HEADER: reason,
                   "x-shop-queue": WAREHOUSE_QUEUE_NAME}
        try:
            with producer_pool.acquire(block=True, timeout=10) as producer:
                producer.publish(
                    message.body, exchange=DEAD_LETTER_EXCHANGE,
                    routing_key=str((message.delivery_info or {}).get("routing_key", "")),
                    headers=headers, message_id=properties.get("message_id"),
                    content_type=message.content_type or "application/octet-stream",
                    content_encoding=message.content_encoding or "binary",
                    delivery_mode=2, retry=True,
                    retry_policy={"max_retries": 2, "interval_start": 0.2})
        except Exception:
            log.exception("could not publish the dead letter; rejecting it instead")
            message.reject(requeue=False)
            return
        message.ack()

    return dead_letter


class WarehouseConsumer(bootsteps.ConsumerStep):  # type: ignore[misc]
    """Consumes ``shop.warehouse`` in the worker, beside its tasks (AMQP only)."""

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self._dead_letter = publish_dead_letter(c.app.producer_pool)

    def get_consumers(self, channel: Any) -> list[Consumer]:
        if not get_settings().broker_is_amqp:
            return []
        consumer = Consumer(  # type: ignore[no-untyped-call]
            channel, queues=[warehouse_queue(get_settings())], on_message=self._on_message,
            prefetch_count=PREFETCH)
        return [consumer]

    def _on_message(self, message: Message) -> None:
        handle(message, dead_letter=self._dead_letter)
