"""The delivery limit of the quorum task queues, on a real RabbitMQ (a vhost per test): a
message given back once too often ends in ``shop.dead_letter``, and the
``shop-dead-letter`` policy of ``deploy/rabbitmq/definitions.json`` can lower the limit
on live queues (RabbitMQ applies the lower of policy and argument)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from kombu import Connection

from shop.config import Settings
from shop.messaging.broker import DEAD_LETTER_POLICY, DELIVERY_LIMIT, declare_topology

pytestmark = pytest.mark.rabbitmq

DEFINITIONS = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "definitions.json"


def given_back_until_gone(url: str, queue: str) -> tuple[int, dict[str, object] | None]:
    """Publish one message to ``queue`` and reject it with requeue until the queue lets
    it go; returns how often it was delivered and what then sat in the dead-letter
    queue (its headers), if anything."""
    message_id = str(uuid.uuid4())
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        conn.Producer().publish({"poison": True}, exchange=queue, routing_key=queue,
                                serializer="json", delivery_mode=2, message_id=message_id)
        channel = conn.channel()
        deliveries = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = channel.basic_get(queue, no_ack=False)
            if message is None:
                break
            deliveries += 1
            channel.basic_reject(message.delivery_tag, requeue=True)
        time.sleep(0.5)  # at-least-once dead-lettering confirms in the background
        dead = channel.basic_get("shop.dead_letter", no_ack=True)
    if dead is None or dead.properties.get("message_id") != message_id:
        return deliveries, None
    return deliveries, dict(dead.properties.get("application_headers") or {})


def test_a_message_given_back_past_the_delivery_limit_ends_in_the_dead_letter_queue(
        vhost_url: str) -> None:
    with Connection(vhost_url) as conn:
        declare_topology(conn, Settings(broker_url=vhost_url))
    deliveries, headers = given_back_until_gone(vhost_url, "payments")
    assert deliveries == DELIVERY_LIMIT + 1
    assert headers is not None, "not in shop.dead_letter"
    assert headers["x-first-death-reason"] == "delivery_limit"
    assert headers["x-first-death-queue"] == "payments"


def test_the_policy_from_the_definitions_lowers_the_limit_on_live_queues(
        vhost_url: str) -> None:
    vhost = vhost_url.rsplit("/", 1)[1]
    with Connection(vhost_url) as conn:  # the workers ran first, then the policy came
        declare_topology(conn, Settings(broker_url=vhost_url))
    definitions = json.loads(DEFINITIONS.read_text())
    [policy] = [p for p in definitions["policies"] if p["name"] == DEAD_LETTER_POLICY]
    policy = {**policy, "vhost": vhost, "definition": {**policy["definition"],
                                                        "delivery-limit": 2}}
    imported = subprocess.run(["rabbitmqctl", "import_definitions"],
                              input=json.dumps({"policies": [policy]}), text=True,
                              capture_output=True, timeout=60, check=False)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    deliveries, headers = given_back_until_gone(vhost_url, "orders")
    assert deliveries == 3
    assert headers is not None, "not in shop.dead_letter"
    assert headers["x-first-death-reason"] == "delivery_limit"
