"""Faults the rig injects from outside the shop's processes: a tap that delivers every
task message twice, and poison messages."""

from __future__ import annotations

import threading
import time
from contextlib import suppress
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp

TASK_QUEUES = ("orders", "payments", "notifications", "reports")


def amqp_connection(url: str) -> amqp.Connection:
    parts = urlsplit(url)
    conn = amqp.Connection(host=f"{parts.hostname}:{parts.port or 5672}",
                           userid=unquote(parts.username or "guest"),
                           password=unquote(parts.password or "guest"),
                           virtual_host=unquote(parts.path[1:] or "/"))
    conn.connect()
    return conn


class Duplicator:
    """Every task message the shop publishes reaches its queue twice.

    A tap queue is bound beside each task queue to the same exchange and routing key,
    so the broker routes every publish to both; a thread copies each message from the
    tap into the task queue through the default exchange (which bypasses the tap).
    The copy keeps the body, headers and properties, so it has the same task id: two
    deliveries of one message, as an at-least-once broker may make. Retries the
    workers publish are tapped and doubled too.
    """

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.copied = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not getattr(self, "_ready", False):
            assert time.monotonic() < deadline, "the duplicating tap did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        conn = amqp_connection(self.broker_url)
        channel = conn.channel()
        for queue in TASK_QUEUES:
            tap = f"chaos.tap.{queue}"
            channel.exchange_declare(queue, "direct", durable=True, auto_delete=False)
            channel.queue_declare(tap, durable=True, auto_delete=False)
            channel.queue_bind(tap, queue, queue)
            channel.basic_consume(tap, callback=self._copier(channel, queue))
        self._ready = True
        try:
            while not self._stop.is_set():
                with suppress(TimeoutError, OSError):
                    conn.drain_events(timeout=0.2)
        finally:
            with suppress(Exception):
                conn.close()

    def _copier(self, channel: Any, queue: str) -> Any:
        def copy(message: amqp.Message) -> None:
            twin = amqp.Message(message.body, **message.properties)
            channel.basic_publish(twin, exchange="", routing_key=queue)
            channel.basic_ack(message.delivery_tag)
            self.copied += 1
        return copy


def publish_undecodable(broker_url: str, queue: str = "orders") -> None:
    """A message no worker can decode: JSON by its content type, not by its body."""
    conn = amqp_connection(broker_url)
    try:
        channel = conn.channel()
        channel.basic_publish(amqp.Message(b"\xff\xfe{not json", content_type="application/json",
                                           content_encoding="utf-8", delivery_mode=2),
                              exchange=queue, routing_key=queue)
    finally:
        conn.close()
