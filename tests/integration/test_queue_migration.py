"""Classic to quorum on a live vhost (real RabbitMQ, a vhost per test): ``shop broker
migrate-queues`` moves every message waiting in the old classic queues into quorum
queues of the same names, losing none, while a publisher keeps publishing."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections import Counter
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue
from kombu.transport.native_delayed_delivery import calculate_routing_key

from shop.config import Settings
from shop.messaging import migration
from shop.messaging.broker import (
    EVENTS_EXCHANGE,
    FULFILLMENT_ROUTING_KEY,
    QUEUES,
    declare_topology,
    owned_queues,
    task_queues,
)
from tests.fixtures.stack import wait_until

pytestmark = pytest.mark.rabbitmq

PER_QUEUE = 40


def shop(vhost_url: str, *args: str, kind: str = "quorum") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    env.pop("PYTHONWARNINGS", None)
    env |= {"SHOP_BROKER_URL": vhost_url, "SHOP_BROKER_QUEUE_TYPE": kind}
    return subprocess.run([sys.executable, "-m", "shop.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def rows(what: str, vhost: str, *columns: str) -> dict[str, str]:
    done = subprocess.run(["rabbitmqctl", f"list_{what}", "-q", "--no-table-headers", "-p",
                           vhost, *columns], capture_output=True, text=True, timeout=60,
                          check=True)
    return dict(line.split("\t", 1) for line in done.stdout.splitlines() if "\t" in line)


def old_release_topology(url: str) -> list[Queue]:
    """The queues exactly as a release before quorum queues declared them: classic task
    queues on direct exchanges, the other four without arguments."""
    classic = Settings(broker_url=url, broker_queue_type="classic")
    queues = [*task_queues(classic)]
    queues += [Queue(q.name, q.exchange, routing_key=q.routing_key, durable=True)
               for q in owned_queues(classic)[len(QUEUES):]]
    with Connection(url) as conn:
        for queue in queues:
            queue(conn.default_channel).declare()
    return queues


def publish_waiting(url: str, queues: list[Queue]) -> dict[str, set[str]]:
    """PER_QUEUE persistent messages into each queue, by its own exchange and routing
    key, with publisher confirms; returns the message ids each queue holds."""
    sent: dict[str, set[str]] = {}
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer()
        for queue in queues:
            key = FULFILLMENT_ROUTING_KEY if queue.name == "shop.fulfillment" else (
                "orders" if queue.name == "shop.dead_letter" else str(queue.routing_key))
            sent[queue.name] = set()
            for n in range(PER_QUEUE):
                message_id = str(uuid.uuid4())
                producer.publish({"n": n, "queue": queue.name}, exchange=queue.exchange,
                                 routing_key=key, serializer="json", delivery_mode=2,
                                 message_id=message_id, headers={"origin": queue.name})
                sent[queue.name].add(message_id)
    return sent


def drained(url: str, name: str) -> list[dict[str, Any]]:
    """Every message in ``name`` (acknowledged), as its id, headers and body."""
    out = []
    with Connection(url) as conn:
        channel = conn.channel()
        while (message := channel.basic_get(name, no_ack=False)) is not None:
            out.append({"id": message.properties.get("message_id"),
                        "headers": message.properties.get("application_headers") or {},
                        "body": message.body})
            channel.basic_ack(message.delivery_tag)
    return out


class Publisher(threading.Thread):
    """Keeps publishing warehouse requests to ``shop.events`` (confirmed) while the
    migration runs, as a relay would; records what the broker confirmed."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.confirmed = url, threading.Event(), set[str]()

    def run(self) -> None:
        events = Exchange(EVENTS_EXCHANGE, type="topic", durable=True)
        with Connection(self.url, transport_options={"confirm_publish": True}) as conn:
            producer = conn.Producer()
            while not self.stop.is_set():
                message_id = str(uuid.uuid4())
                producer.publish({"live": True}, exchange=events,
                                 routing_key=FULFILLMENT_ROUTING_KEY, serializer="json",
                                 delivery_mode=2, message_id=message_id)
                self.confirmed.add(message_id)
                self.stop.wait(0.005)


def test_the_classic_to_quorum_migration_on_a_live_vhost_loses_no_waiting_message(
        vhost_url: str) -> None:
    vhost = vhost_url.rsplit("/", 1)[1]
    old = old_release_topology(vhost_url)
    sent = publish_waiting(vhost_url, old)
    assert set(rows("queues", vhost, "name", "type").values()) == {"classic"}

    checked = shop(vhost_url, "broker", "migrate-queues", "--check")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "orders: a classic queue, expected quorum" in checked.stdout
    assert "10 queues to migrate" in checked.stdout

    with Connection(vhost_url) as conn:  # a worker still consuming: refused, nothing moves
        channel = conn.channel()
        channel.basic_qos(0, 1, False)
        channel.basic_consume("orders", callback=lambda message: None)  # holds one, unacked
        refused = shop(vhost_url, "broker", "migrate-queues")
        channel.close()  # gives its message back
    assert refused.returncode == 1
    assert "stop the workers" in refused.stderr
    assert set(rows("queues", vhost, "name", "type").values()) == {"classic"}

    publisher = Publisher(vhost_url)
    publisher.start()
    try:
        done = shop(vhost_url, "broker", "migrate-queues")
    finally:
        publisher.stop.set()
        publisher.join(timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    for queue in old:  # shop.fulfillment had the live publisher's messages too
        if queue.name != "shop.fulfillment":
            assert f"{queue.name}: classic -> quorum, {PER_QUEUE} waiting messages moved" in (
                done.stdout), done.stdout
    assert publisher.confirmed, "the publisher ran during the migration"

    types = rows("queues", vhost, "name", "type")
    expected = owned_queues(Settings(broker_url=vhost_url))
    assert {q.name: types.get(q.name) for q in expected} == {q.name: "quorum" for q in expected}
    assert not [name for name in types if name.endswith(migration.HOLDING_SUFFIX)]
    exchanges = rows("exchanges", vhost, "name", "type")
    assert {name: exchanges[name] for name in QUEUES} == dict.fromkeys(QUEUES, "topic")
    with Connection(vhost_url) as conn:  # what a worker of this release declares: no 406
        for queue in expected:
            queue(conn.default_channel).declare()

    for queue in old:
        messages = drained(vhost_url, queue.name)
        ids = Counter(m["id"] for m in messages)
        if queue.name == "shop.fulfillment":  # the waiting ones, and every confirmed live one
            assert sent[queue.name] | publisher.confirmed <= set(ids)
            assert set(ids) <= sent[queue.name] | publisher.confirmed
            assert all(ids[i] == 1 for i in sent[queue.name])
        else:
            assert ids == Counter(sent[queue.name]), queue.name  # none lost, none doubled
            assert {m["headers"]["origin"] for m in messages} == {queue.name}


def test_a_migration_that_stopped_halfway_is_finished_by_running_it_again(
        vhost_url: str) -> None:
    """A run that died after moving ``orders`` into its holding queue and deleting it:
    the next run declares ``orders`` as a quorum queue and empties the holding queue
    into it."""
    vhost = vhost_url.rsplit("/", 1)[1]
    quorum = Settings(broker_url=vhost_url)
    orders = task_queues(quorum)[0]
    holding = orders.name + migration.HOLDING_SUFFIX
    with Connection(vhost_url, transport_options={"confirm_publish": True}) as conn:
        channel = conn.channel()
        channel.queue_declare(holding, durable=True, auto_delete=False,
                              arguments=orders.queue_arguments)
        producer = conn.Producer()
        ids = {str(uuid.uuid4()) for _ in range(25)}
        for message_id in ids:
            producer.publish({"left": "behind"}, exchange="", routing_key=holding,
                             serializer="json", message_id=message_id, delivery_mode=2)

    done = shop(vhost_url, "broker", "migrate-queues")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "orders: quorum -> quorum, 25 waiting messages moved" in done.stdout, done.stdout
    assert rows("queues", vhost, "name", "type").get("orders") == "quorum"
    assert holding not in rows("queues", vhost, "name", "type")
    assert Counter(m["id"] for m in drained(vhost_url, "orders")) == Counter(ids)
    again = shop(vhost_url, "broker", "migrate-queues", "--check")
    assert again.returncode == 0, again.stdout
    assert "orders: quorum, as expected" in again.stdout


def test_going_back_to_classic_waits_for_the_countdown_retries_in_the_delay_queues(
        vhost_url: str) -> None:
    """Classic queues do not use Celery's delay queues: a retry still waiting there
    when the task exchanges change would have nowhere to go, so the command refuses
    until it has reached its task queue, and then moves it with the rest."""
    vhost = vhost_url.rsplit("/", 1)[1]
    with Connection(vhost_url) as conn:
        declare_topology(conn, Settings(broker_url=vhost_url))
    message_id = str(uuid.uuid4())
    with Connection(vhost_url, transport_options={"confirm_publish": True}) as conn:
        conn.Producer().publish(
            {"retry": True}, exchange=Exchange("celery_delayed_27", type="topic"),
            routing_key=calculate_routing_key(12, "orders"), serializer="json",
            delivery_mode=2, message_id=message_id)

    refused = shop(vhost_url, "broker", "migrate-queues", kind="classic")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "1 countdown retries still wait" in refused.stderr
    assert rows("queues", vhost, "name", "type")["orders"] == "quorum"

    wait_until(lambda: rows("queues", vhost, "name", "messages").get("orders") == "1",
               timeout=30, what="the retry to reach orders")
    done = shop(vhost_url, "broker", "migrate-queues", kind="classic")
    assert done.returncode == 0, done.stdout + done.stderr
    types = rows("queues", vhost, "name", "type")
    assert {q.name: types[q.name] for q in owned_queues(Settings(broker_url=vhost_url))} == {
        q.name: "classic" for q in owned_queues(Settings(broker_url=vhost_url))}
    assert [m["id"] for m in drained(vhost_url, "orders")] == [message_id]
