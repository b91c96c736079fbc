"""The broker's topology in one place: queues, exchanges, routing keys, dead letters.

- one durable queue per kind of work (``QUEUES``), each bound to an exchange of its own
  name, each dead-lettering to ``shop.dlx``, so rejected, unknown and poison messages
  land in ``shop.dead_letter`` instead of vanishing. New orders enter on ``intake``
  (their first step) and money already decided (captures, voids, refunds) has its
  own queue, ``settlements``: in a sale, a backlog of new orders never stands in
  front of the orders already under way (``orders``: reservations, the warehouse
  request), nor a backlog of creates (``payments``) in front of a capture, and both
  provider endpoints are used at once. A worker told to consume ``orders`` consumes
  ``intake`` too, and one of ``payments`` ``settlements`` (``implied_queues``), so a
  command line written before those queues existed misses nothing;
- messages to the warehouse go to the durable topic exchange ``shop.events``; the shop
  owns durable ``shop.fulfillment`` and ``shop.fulfillment_cancellations`` queues bound
  to it, so a request (or its withdrawal) is kept even before the warehouse binds its
  own queue (CONTRACT.md);
- the warehouse answers on the durable topic exchange ``shop.warehouse``; the shop's
  durable queue ``shop.warehouse`` (bound to ``fulfillment.*``) dead-letters to
  ``shop.dlx`` with the message's own routing key, and the worker consumes it
  (``shop.orders.fulfillment.consumer``);
- every queue the shop owns has the type ``SHOP_BROKER_QUEUE_TYPE``, and every
  declaration takes its arguments from ``queue_arguments``:

  - ``quorum`` (the default): replicated by Raft over a cluster's nodes, a publish
    confirmed once a majority has it. A dead-lettering quorum queue carries a delivery
    limit (``DELIVERY_LIMIT``: RabbitMQ 3.10 has no default, so a message that kills
    its worker every time would come back forever) and dead-letters at least once
    (``x-dead-letter-strategy``, which needs ``x-overflow: reject-publish``): a message
    leaves it only once ``shop.dead_letter`` confirmed it. The ``shop-dead-letter``
    policy of ``deploy/rabbitmq/definitions.json`` (``dead_letter_policy``) says the
    same; RabbitMQ applies the lower of the policy's and the argument's limit, so an
    operator can lower it on a live queue, and raising it takes new queues
    (``shop broker migrate-queues``). The argument is there because the workers declare
    their queues themselves: a vhost nobody imported the definitions into still has the
    bound;
  - ``classic``: one node's queues, exactly as earlier releases declared them, so a
    single node upgrades without touching its queues.

  A queue's arguments are fixed when it is created: ``shop.messaging.migration`` moves
  an existing deployment's messages to queues of the other type.
- delayed (countdown) retries: on quorum queues through Celery's native delayed
  delivery (28 quorum queues ``celery_delayed_0..27`` whose TTLs count the delay in
  binary, chained by dead-lettering, then ``celery_delayed_delivery`` back to the task
  queue's exchange), declared by every shop process that connects
  (``declare_topology``). It routes on topic exchanges, so on quorum the task
  exchanges are ``topic``; on classic they stay ``direct`` and a countdown message
  waits in its worker (ETA) as before. The classic choice of earlier releases was for
  delayed retries that RabbitMQ's cycle detection dropped from quorum queues: Celery
  5.7.0 (the lock) carries the fix (celery#9867: a retry drops its ``x-death``
  headers) and strips the delay prefix a retried routing key carried (kombu#2556);
- prefetch: quorum queues have no global QoS, so Celery (``worker_detect_quorum_queues``)
  sets the prefetch per consumer: a worker holds at most its concurrency of each queue
  it consumes (``shop.celery``).

The embedded transports (SQLite, filesystem) have no exchanges, queue types or queue
arguments: only the queue names apply there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from shop.config import Settings, get_settings

QUEUES = ("orders", "intake", "payments", "settlements", "notifications", "reports")
# A worker that consumes the first consumes the second as well.
IMPLIED = {"orders": "intake", "payments": "settlements"}

EVENTS_EXCHANGE = "shop.events"
FULFILLMENT_ROUTING_KEY = "order.fulfillment_requested"
FULFILLMENT_CANCELLED_ROUTING_KEY = "order.fulfillment_cancelled"

# Redeliveries of one message before a quorum queue dead-letters it: well above what the
# task runner allows (SHOP_MAX_DELIVERIES, 10), which gives the order up properly first;
# RabbitMQ 4's own default.
DELIVERY_LIMIT = 20
DEAD_LETTER_POLICY = "shop-dead-letter"

DEAD_LETTER_EXCHANGE = Exchange("shop.dlx", type="topic", durable=True)
EVENTS = Exchange(EVENTS_EXCHANGE, type="topic", durable=True)
WAREHOUSE_EXCHANGE = "shop.warehouse"
WAREHOUSE_QUEUE_NAME = "shop.warehouse"
WAREHOUSE_ROUTING_KEYS = "fulfillment.*"
WAREHOUSE = Exchange(WAREHOUSE_EXCHANGE, type="topic", durable=True)


def is_quorum(settings: Settings) -> bool:
    """Whether the shop's queues are quorum queues (RabbitMQ and the setting say so)."""
    return settings.broker_is_amqp and settings.broker_queue_type == "quorum"


def queue_arguments(settings: Settings, *, dead_letter_routing_key: str | None = None,
                    dead_letters: bool = False) -> dict[str, Any]:
    """The arguments of a queue the shop declares: its type, and with
    ``dead_letter_routing_key`` (or ``dead_letters``, keeping each message's own routing
    key) its dead-lettering to ``shop.dlx`` (on quorum queues with the delivery limit, at
    least once). Empty on the embedded transports."""
    if not settings.broker_is_amqp:
        return {}
    args: dict[str, Any] = {"x-queue-type": settings.broker_queue_type}
    if dead_letters or dead_letter_routing_key is not None:
        args["x-dead-letter-exchange"] = DEAD_LETTER_EXCHANGE.name
        if dead_letter_routing_key is not None:
            args["x-dead-letter-routing-key"] = dead_letter_routing_key
        if is_quorum(settings):
            args |= {"x-delivery-limit": DELIVERY_LIMIT,
                     "x-dead-letter-strategy": "at-least-once",
                     "x-overflow": "reject-publish"}
    return args


def task_exchange(settings: Settings, name: str) -> Exchange:
    """A task queue's own exchange: topic on quorum queues (native delayed delivery
    routes on topic exchanges only), direct otherwise."""
    kind = "topic" if is_quorum(settings) else "direct"
    return Exchange(name, type=kind, durable=True)


def task_queues(settings: Settings) -> list[Queue]:
    """The workers' queues, with dead-lettering where the broker has it (AMQP)."""
    return [
        Queue(name, task_exchange(settings, name), routing_key=name, durable=True,
              queue_arguments=queue_arguments(settings, dead_letter_routing_key=name) or None)
        for name in QUEUES
    ]


def implied_queues(consumed: list[str]) -> list[str]:
    """Queues a worker consuming ``consumed`` must consume as well and did not name
    (``-Q orders,payments`` from before ``intake`` and ``settlements`` existed)."""
    return [IMPLIED[name] for name in consumed
            if name in IMPLIED and IMPLIED[name] not in consumed]


def dead_letter_queue(settings: Settings) -> Queue:
    """``shop.dead_letter``: everything ``shop.dlx`` receives (it dead-letters nowhere)."""
    return Queue("shop.dead_letter", DEAD_LETTER_EXCHANGE, routing_key="#", durable=True,
                 queue_arguments=queue_arguments(settings) or None)


def fulfillment_queue(settings: Settings) -> Queue:
    """``shop.fulfillment``: warehouse requests, kept until the warehouse takes them."""
    return Queue("shop.fulfillment", EVENTS, routing_key=FULFILLMENT_ROUTING_KEY,
                 durable=True, queue_arguments=queue_arguments(settings) or None)


def cancellation_queue(settings: Settings) -> Queue:
    """``shop.fulfillment_cancellations``: withdrawn warehouse requests."""
    return Queue("shop.fulfillment_cancellations", EVENTS,
                 routing_key=FULFILLMENT_CANCELLED_ROUTING_KEY, durable=True,
                 queue_arguments=queue_arguments(settings) or None)


def warehouse_queue(settings: Settings) -> Queue:
    """``shop.warehouse``: the warehouse's answers (``fulfillment.*``), consumed by the
    workers; a refused one is dead-lettered with its own routing key."""
    return Queue(WAREHOUSE_QUEUE_NAME, WAREHOUSE, routing_key=WAREHOUSE_ROUTING_KEYS,
                 durable=True,
                 queue_arguments=queue_arguments(settings, dead_letters=True) or None)


def topology_queues(settings: Settings) -> list[Queue]:
    """The queues beyond the task queues that the shop's messages rely on."""
    return [dead_letter_queue(settings), fulfillment_queue(settings),
            cancellation_queue(settings), warehouse_queue(settings)]


def owned_queues(settings: Settings) -> list[Queue]:
    """Every queue the shop declares (and ``shop doctor`` and the migration check)."""
    return [*task_queues(settings), *topology_queues(settings)]


def dead_letter_policy(vhost: str = "/") -> dict[str, Any]:
    """The ``shop-dead-letter`` policy (RabbitMQ definitions format) for the queues that
    dead-letter: to ``shop.dlx``, at least once, after ``DELIVERY_LIMIT`` redeliveries on
    quorum queues (classic queues ignore what they lack)."""
    names = [q.name for q in owned_queues(Settings(broker_url="amqp://localhost//",
                                                   broker_queue_type="quorum"))
             if (getattr(q, "queue_arguments", None) or {}).get("x-dead-letter-exchange")]
    pattern = "^(" + "|".join(name.replace(".", r"\.") for name in names) + ")$"
    return {"vhost": vhost, "name": DEAD_LETTER_POLICY, "pattern": pattern,
            "apply-to": "queues", "priority": 0,
            "definition": {"dead-letter-exchange": DEAD_LETTER_EXCHANGE.name,
                           "delivery-limit": DELIVERY_LIMIT,
                           "dead-letter-strategy": "at-least-once",
                           "overflow": "reject-publish"}}


def countdown(settings: Settings, seconds: float) -> float:
    """A delay as the broker can keep it: native delayed delivery counts whole seconds
    from one (Celery refuses a countdown under a second there), so on quorum queues a
    shorter wait becomes one second. Zero stays zero: no delay."""
    if seconds <= 0 or not is_quorum(settings):
        return seconds
    return max(seconds, 1.0)


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


def declare_topology(connection: Connection, settings: Settings | None = None) -> None:
    """Declare what the shop's messages rely on beyond a worker's own consumers (AMQP
    only): the dead-letter queue, the warehouse's queues on the events exchange, the
    queue of the warehouse's answers, and on
    quorum queues the task queues with the delayed-delivery exchanges and queues a
    countdown travels through (so a relay may publish one before any worker started)."""
    settings = settings or get_settings()
    channel = connection.default_channel
    for queue in topology_queues(settings):
        queue(channel).declare()
    if is_quorum(settings):
        for queue in task_queues(settings):
            queue(channel).declare()
        declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
        for queue in task_queues(settings):
            bind_queue_to_native_delayed_delivery_exchange(connection, queue)
