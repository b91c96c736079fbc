"""Queue types on a real RabbitMQ, each test in its own vhost: every queue the shop
declares (a worker, a relay and the API running) has the type ``SHOP_BROKER_QUEUE_TYPE``
says, and a step retried with a countdown comes back and finishes, on quorum queues
through Celery's native delayed delivery, prefetching per consumer (no global QoS)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kombu import Connection
from kombu.transport.native_delayed_delivery import level_name

from shop.config import Settings
from shop.messaging.broker import QUEUES, owned_queues
from shop.payments.faults import read_state, write_rules
from tests.fixtures.api import order_body
from tests.fixtures.stack import COMMON, Stack, build_stack, statuses

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

DELAY_LEVELS = [level_name(level) for level in range(28)]


def listed(what: str, vhost: str, *columns: str) -> list[list[str]]:
    """``rabbitmqctl list_<what> -p vhost columns…`` as rows of strings."""
    done = subprocess.run(["rabbitmqctl", f"list_{what}", "-q", "--no-table-headers", "-p",
                           vhost, *columns], capture_output=True, text=True, timeout=60,
                          check=True)
    return [line.split("\t") for line in done.stdout.splitlines() if "\t" in line]


def delayed_messages(url: str) -> int:
    """Messages waiting in Celery's delay-level queues now (0 where they do not exist)."""
    waiting = 0
    with Connection(url, connect_timeout=5) as conn:
        for name in DELAY_LEVELS:
            channel = conn.channel()
            try:
                waiting += int(channel.queue_declare(name, passive=True).message_count)
            except Exception as exc:
                if getattr(exc, "code", None) != 404:
                    raise
            finally:
                with contextlib.suppress(Exception):  # the broker closed it already (404)
                    channel.close()
    return waiting


@pytest.fixture(params=["quorum", "classic"])
def typed_stack(request: pytest.FixtureRequest, pg_url: str, vhost_url: str,
                smtp_server: Any, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """The dummy-provider stack with the queue type of the parameter; retries wait 1.5
    to 3 s, then 3 to 6 s (long enough to see a message in a delay queue)."""
    running = build_stack({
        "SHOP_DATABASE_URL": pg_url, "SHOP_BROKER_URL": vhost_url,
        "SHOP_PAYMENT_PROVIDER": "dummy", "SHOP_DATA_DIR": str(tmp_path / "data"),
        "SHOP_PAYMENT_FAULTS": str(tmp_path / "faults.json"), "SHOP_SMTP_URL": smtp_server.url,
        **COMMON, "SHOP_RETRY_BASE_DELAY": "3", "SHOP_RETRY_MAX_DELAY": "6",
        "SHOP_BROKER_QUEUE_TYPE": request.param,
    }, tmp_path=tmp_path, monkeypatch=monkeypatch)
    yield running
    running.stop_all()


def test_every_queue_the_shop_declares_has_the_configured_type_and_a_countdown_retry_arrives(
        typed_stack: Stack, vhost_url: str) -> None:
    from shop.api import create_app

    kind = typed_stack.env["SHOP_BROKER_QUEUE_TYPE"]
    vhost = vhost_url.rsplit("/", 1)[1]
    faults = Path(typed_stack.env["SHOP_PAYMENT_FAULTS"])
    write_rules(faults, [{"op": "*", "mode": "unavailable", "times": 2}])
    typed_stack.start_worker("w1")
    typed_stack.start_relay()
    with TestClient(create_app()) as api:
        placed = api.post("/v1/orders", json=order_body(), headers={"Idempotency-Key": "qt-1"})
        assert placed.status_code == 202, placed.text
        order_id = placed.json()["id"]
        seen_delayed = 0
        deadline = time.monotonic() + 90
        while statuses([order_id]).get(order_id) not in ("confirmed", "failed"):
            assert time.monotonic() < deadline, typed_stack.logs()
            seen_delayed = max(seen_delayed, delayed_messages(vhost_url))
            time.sleep(0.1)
        assert statuses([order_id]) == {order_id: "confirmed"}, typed_stack.logs()

    calls = read_state(faults)["calls"]
    assert sum(calls.values()) >= 3  # two refused calls, each retried after its countdown
    types = dict(listed("queues", vhost, "name", "type"))
    expected = owned_queues(Settings(broker_url=vhost_url, broker_queue_type=kind))
    assert {q.name: types.get(q.name) for q in expected} == {q.name: kind for q in expected}
    exchanges = dict(listed("exchanges", vhost, "name", "type"))
    task_exchange = "topic" if kind == "quorum" else "direct"
    assert {name: exchanges[name] for name in QUEUES} == dict.fromkeys(QUEUES, task_exchange)
    consumers = listed("consumers", vhost, "queue_name", "prefetch_count")
    assert {queue for queue, _ in consumers} >= set(QUEUES)
    logs = typed_stack.logs()
    assert "Direct exchanges are not supported" not in logs
    if kind == "quorum":
        # the retries waited in Celery's delay-level queues, which are quorum queues too
        assert seen_delayed >= 1
        assert {name: types.get(name) for name in DELAY_LEVELS} == dict.fromkeys(
            DELAY_LEVELS, "quorum")
        # no global QoS: each consumer has its own prefetch, the worker's concurrency (2)
        assert {queue: int(prefetch) for queue, prefetch in consumers
                if queue in QUEUES} == dict.fromkeys(QUEUES, 2)
    else:
        assert seen_delayed == 0
        assert not set(DELAY_LEVELS) & set(types)
