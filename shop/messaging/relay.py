"""The outbox relay: publishes committed outbox rows to the broker.

Run as ``shop relay`` (several may run at once). Task messages go out through the
Celery app with the outbox row id as task id; events go to their topic exchange
as persistent JSON with the row id as ``message_id``. When the broker is down the
rows wait, and the relay backs off and tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from celery import Celery
from kombu.connection import Connection
from kombu.entity import Exchange
from kombu.messaging import Producer

from shop import tracing
from shop.config import get_settings
from shop.db import session_scope
from shop.messaging import broker
from shop.messaging.models import OutboxMessage
from shop.messaging.service import relay_batch

log = logging.getLogger(__name__)

PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5,
                 "interval_max": 1.0}


OnConnect = Callable[[Connection], None]


class Publisher:
    """Sends outbox rows over one broker connection of its own (publisher confirms on).

    ``on_connect`` declares what the messages rely on (queues bound to the events
    exchange) each time the connection is made, before anything is published.
    """

    def __init__(self, app: Celery, on_connect: OnConnect | None = None) -> None:
        self.app = app
        self.on_connect = on_connect
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._depths: dict[str, int] = {}

    def _get_producer(self) -> Producer:
        if self._producer is None:
            connection = self.app.connection_for_write()
            connection.ensure_connection(max_retries=1)
            if self.on_connect is not None:
                self.on_connect(connection)
            self._connection, self._producer = connection, connection.Producer()
        return self._producer

    def __call__(self, message: OutboxMessage) -> None:
        send(self.app, self._get_producer(), message)
        log.info("relayed %s %s", message.kind, message.name, extra={
            "request_id": message.trace, "order_id": message.payload.get("order_id")})

    def backlogged(self, message: OutboxMessage) -> bool:
        """Whether the task's queue still holds ready messages (RabbitMQ only): then its
        published copy is waiting its turn, not lost. Looked up once per queue a pass."""
        if message.kind != "task" or not self.app.conf.broker_url.startswith(("amqp", "pyamqp")):
            return False
        queue = _queue_of(self.app, message.name)
        if queue not in self._depths:
            try:
                declared = self._get_producer().channel.queue_declare(queue, passive=True)
                self._depths[queue] = int(declared.message_count)
            except Exception as exc:  # an unknown queue, a broker hiccup: publish anyway
                log.debug("queue depth of %s unknown: %s", queue, exc)
                self.reset()  # a refused passive declare closes the channel
                self._depths[queue] = 0
        return self._depths[queue] > 0

    def new_pass(self) -> None:
        self._depths.clear()

    def reset(self) -> None:
        """Drop the broker connection after a failure; the next publish reconnects."""
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            try:
                connection.close()
            except Exception as exc:
                log.debug("closing a broken connection: %s", exc)


def send(app: Celery, producer: Producer, message: OutboxMessage, countdown: float = 0,
         retry_policy: dict[str, float] | None = None) -> None:
    """Publish one outbox row: a task through the Celery app (its id is the row id), or
    an event to its topic exchange (persistent JSON, the row id as ``message_id``);
    the request that caused it rides along as the ``request_id`` header, and the span
    that wrote it as the ``traceparent`` header (``shop.tracing``)."""
    policy = retry_policy or PUBLISH_RETRY
    headers = {"request_id": message.trace} if message.trace else {}
    headers.update(tracing.message_headers(message.traceparent))
    if message.kind == "task":
        delay = broker.countdown(get_settings(), countdown)
        app.send_task(message.name, kwargs=message.payload, task_id=str(message.id),
                      producer=producer, countdown=delay or None, retry=True,
                      retry_policy=policy, headers=headers)
        return
    exchange = Exchange(message.exchange, type="topic", durable=True)
    producer.publish(
        message.payload, exchange=exchange, routing_key=message.name,
        declare=[exchange], serializer="json", delivery_mode=2, headers=headers,
        message_id=str(message.id), retry=True, retry_policy=policy,
    )


def _queue_of(app: Celery, task_name: str) -> str:
    routes: dict[str, dict[str, str]] = app.conf.task_routes or {}
    route = routes.get(task_name) or next(
        (r for pattern, r in routes.items()
         if pattern.endswith("*") and task_name.startswith(pattern[:-1])), None)
    return route["queue"] if route else str(app.conf.task_default_queue)


def relay_once(publisher: Publisher) -> int:
    """One pass over due rows; returns how many were published."""
    settings = get_settings()
    publisher.new_pass()
    with session_scope() as session:
        return relay_batch(session, publish=publisher, limit=settings.relay_batch_size,
                           grace=settings.relay_grace,
                           waits=publisher.backlogged if settings.relay_grace else None)


def run(app: Celery, stop: threading.Event | None = None,
        on_connect: OnConnect | None = None) -> None:
    """Relay until ``stop`` is set, backing off while the broker is unreachable."""
    stop = stop or threading.Event()
    publisher = Publisher(app, on_connect)
    poll = get_settings().relay_poll_interval
    delay = poll
    log.info("outbox relay started")
    while not stop.is_set():
        try:
            sent = relay_once(publisher)
        except Exception as exc:
            log.warning("relay could not publish (%s); retrying in %.1fs", exc, delay)
            publisher.reset()
            stop.wait(delay)
            delay = min(delay * 2, 5.0)
            continue
        delay = poll
        if sent == 0:
            stop.wait(poll)
        else:
            time.sleep(0)
