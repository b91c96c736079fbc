"""Faults the rig injects from outside the shop's code: every task message published
twice, and poison messages."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import amqp
import amqp.exceptions
import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.fixtures.localstripe import fetch_intents
from tests.fixtures.webhooks import delivery, intent_event

if TYPE_CHECKING:
    from tests.chaos.rig import Rig


def amqp_connection(url: str) -> amqp.Connection:
    """A connection to the first node of ``url`` (``;``-separated for a cluster) that
    accepts one."""
    failure: Exception | None = None
    for one in url.split(";"):
        parts = urlsplit(one)
        conn = amqp.Connection(host=f"{parts.hostname}:{parts.port or 5672}",
                               userid=unquote(parts.username or "guest"),
                               password=unquote(parts.password or "guest"),
                               virtual_host=unquote(parts.path[1:] or "/"), connect_timeout=5)
        try:
            conn.connect()
        except (OSError, amqp.exceptions.AMQPError) as exc:
            failure = exc
            continue
        return conn
    assert failure is not None
    raise failure


TWICE = Path(__file__).parent / "twice"  # its sitecustomize publishes every task twice


def twice_env(log: Path) -> dict[str, str]:
    """The environment that makes the shop's processes publish every task message twice."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, (str(TWICE),
                                                        os.environ.get("PYTHONPATH")))),
            "SHOP_CHAOS_TWICE_LOG": str(log)}


def publish_undecodable(broker_url: str, queue: str = "orders") -> None:
    """A message no worker can decode: JSON by its content type, not by its body."""
    conn = amqp_connection(broker_url)
    try:
        channel = conn.channel()
        channel.basic_publish(amqp.Message(b"\xff\xfe{not json", content_type="application/json",
                                           content_encoding="utf-8", delivery_mode=2),
                              exchange="", routing_key=queue)
    finally:
        conn.close()


def terminate_backends(pg_url: str) -> int:
    """Terminate every other connection to ``pg_url``'s database; returns how many."""
    engine = create_engine(pg_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
                or 0)
    finally:
        engine.dispose()


EVENT_OF_STATUS = {
    "requires_capture": "payment_intent.amount_capturable_updated",
    "succeeded": "payment_intent.succeeded",
    "canceled": "payment_intent.canceled",
    "requires_payment_method": "payment_intent.payment_failed",
}


class WebhookStorm:
    """Signed Stripe webhooks for the scenario's own PaymentIntents, sent while the
    workflow runs: every event twice (same event id), each round's events shuffled,
    and every event seen so far sent again each round, so old news arrives after new
    (an ``amount_capturable_updated`` after the ``succeeded``)."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.sent = 0
        self.refused: list[str] = []
        self._events: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        with httpx.Client(timeout=15) as client, ThreadPoolExecutor(max_workers=8) as pool:
            while not self._stop.wait(1.0):
                self._learn()
                batch = [e for e in self._events.values() for _ in range(2)]
                self.rig.random.shuffle(batch)
                batch = batch[-400:]  # the newest first would be too polite: keep it mixed
                for _ in pool.map(lambda e: self._send(client, e), batch):
                    pass

    def _learn(self) -> None:
        for intent in fetch_intents(self.rig.stripe_url):
            order_id = (intent.get("metadata") or {}).get("order_id")
            kind = EVENT_OF_STATUS.get(intent["status"])
            if order_id in self.rig.accepted and kind is not None:
                event_id = f"evt_chaos_{intent['id']}_{intent['status']}"[:255]
                self._events.setdefault(event_id, intent_event(
                    kind, intent["id"], order_id=order_id, status=intent["status"],
                    event_id=event_id))

    def _send(self, client: httpx.Client, payload: dict[str, Any]) -> None:
        body, headers = delivery(payload)
        try:
            response = client.post(f"{self.rig.api_url}/webhooks/stripe", content=body,
                                   headers=headers)
        except httpx.HTTPError as exc:
            self.refused.append(repr(exc))
            return
        self.sent += 1
        if response.status_code != 200:
            self.refused.append(f"{response.status_code} {response.text[:200]}")
