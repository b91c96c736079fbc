"""The broker's topology in one place: queues, exchanges, routing keys, dead letters.

- one durable direct queue per kind of work (``QUEUES``), each dead-lettering to
  ``shop.dlx``, so rejected, unknown and poison messages land in ``shop.dead_letter``
  instead of vanishing;
- messages to the warehouse go to the durable topic exchange ``shop.events``; the shop
  owns durable ``shop.fulfillment`` and ``shop.fulfillment_cancellations`` queues bound
  to it, so a request (or its withdrawal) is kept even before the warehouse binds its
  own queue (CONTRACT.md);
- the warehouse answers on the durable topic exchange ``shop.warehouse``; the shop's
  durable queue ``shop.warehouse`` (bound to ``fulfillment.*``) dead-letters to
  ``shop.dlx`` with the message's own routing key, and the worker consumes it
  (``shop.orders.fulfillment.consumer``);
- classic durable queues: delayed (countdown) retries on quorum queues were lost
  before RabbitMQ 4.0.1, and classic queues keep them.

The embedded transports (SQLite, filesystem) have no exchanges or queue arguments:
only the queue names apply there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from shop.config import Settings

QUEUES = ("orders", "payments", "notifications", "reports")

EVENTS_EXCHANGE = "shop.events"
FULFILLMENT_ROUTING_KEY = "order.fulfillment_requested"
FULFILLMENT_CANCELLED_ROUTING_KEY = "order.fulfillment_cancelled"

DEAD_LETTER_EXCHANGE = Exchange("shop.dlx", type="topic", durable=True)
DEAD_LETTER_QUEUE = Queue("shop.dead_letter", DEAD_LETTER_EXCHANGE, routing_key="#",
                          durable=True)
EVENTS = Exchange(EVENTS_EXCHANGE, type="topic", durable=True)
FULFILLMENT_QUEUE = Queue("shop.fulfillment", EVENTS, routing_key=FULFILLMENT_ROUTING_KEY,
                          durable=True)
CANCELLATION_QUEUE = Queue("shop.fulfillment_cancellations", EVENTS,
                           routing_key=FULFILLMENT_CANCELLED_ROUTING_KEY, durable=True)

WAREHOUSE_EXCHANGE = "shop.warehouse"
WAREHOUSE_ROUTING_KEYS = "fulfillment.*"
WAREHOUSE = Exchange(WAREHOUSE_EXCHANGE, type="topic", durable=True)
WAREHOUSE_QUEUE = Queue("shop.warehouse", WAREHOUSE, routing_key=WAREHOUSE_ROUTING_KEYS,
                        durable=True, queue_arguments={
                            "x-queue-type": "classic",
                            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name})


def task_queues(settings: Settings) -> list[Queue]:
    """The workers' queues, with dead-lettering where the broker has it (AMQP)."""
    args: dict[str, Any] = {}
    if settings.broker_is_amqp:
        args = {"x-queue-type": "classic", "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name}
    return [
        Queue(name, Exchange(name, type="direct", durable=True), routing_key=name,
              durable=True, queue_arguments={**args, "x-dead-letter-routing-key": name}
              if args else None)
        for name in QUEUES
    ]


def transport_options(settings: Settings) -> dict[str, Any]:
    """kombu transport options: publisher confirms on AMQP, folders for the embedded one."""
    if settings.broker_is_amqp:
        return {"confirm_publish": True}
    if settings.broker_url.startswith("filesystem://"):
        root = Path(settings.broker_url.removeprefix("filesystem://") or "var/broker")
        for sub in ("queue", "control"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        return {"data_folder_in": str(root / "queue"), "data_folder_out": str(root / "queue"),
                "control_folder": str(root / "control"), "store_processed": False,
                "polling_interval": settings.broker_polling_interval}
    return {"polling_interval": settings.broker_polling_interval}


def declare_topology(connection: Connection) -> None:
    """Declare what the shop's messages rely on beyond the task queues (AMQP only):
    the dead-letter queue, the warehouse's queues on the events exchange, and the
    queue of the warehouse's answers."""
    channel = connection.default_channel
    DEAD_LETTER_QUEUE(channel).declare()
    FULFILLMENT_QUEUE(channel).declare()
    CANCELLATION_QUEUE(channel).declare()
    WAREHOUSE_QUEUE(channel).declare()
