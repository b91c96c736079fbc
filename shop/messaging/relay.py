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

from shop.config import get_settings
from shop.db import session_scope
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

    def _get_producer(self) -> Producer:
        if self._producer is None:
            connection = self.app.connection_for_write()
            connection.ensure_connection(max_retries=1)
            if self.on_connect is not None:
                self.on_connect(connection)
            self._connection, self._producer = connection, connection.Producer()
        return self._producer

    def __call__(self, message: OutboxMessage) -> None:
        producer = self._get_producer()
        if message.kind == "task":
            self.app.send_task(message.name, kwargs=message.payload, task_id=str(message.id),
                               producer=producer, retry=True, retry_policy=PUBLISH_RETRY)
            return
        exchange = Exchange(message.exchange, type="topic", durable=True)
        producer.publish(
            message.payload, exchange=exchange, routing_key=message.name,
            declare=[exchange], serializer="json", delivery_mode=2,
            message_id=str(message.id), retry=True, retry_policy=PUBLISH_RETRY,
        )

    def reset(self) -> None:
        """Drop the broker connection after a failure; the next publish reconnects."""
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            try:
                connection.close()
            except Exception as exc:
                log.debug("closing a broken connection: %s", exc)


def relay_once(publisher: Publisher) -> int:
    """One pass over due rows; returns how many were published."""
    with session_scope() as session:
        return relay_batch(session, publish=publisher, limit=get_settings().relay_batch_size)


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
