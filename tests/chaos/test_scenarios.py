"""The fault-injection scenarios of issue 13 (``make chaos``): each places orders
through the real API, injects one kind of fault, and counts broken promises."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shop.celery import app
from shop.config import get_settings
from shop.orders.workflow import TaskName
from tests.chaos.faults import publish_undecodable, twice_env
from tests.chaos.rig import ORDERS, Rig
from tests.fixtures.stack import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]

Chaos = Callable[..., Rig]


def test_baseline_without_faults(chaos: Chaos) -> None:
    rig = chaos("baseline, no fault")
    rig.stock_for(ORDERS)
    rig.place(ORDERS).join()
    rig.finish()


def test_workers_killed_ten_times(chaos: Chaos) -> None:
    rig = chaos("1. worker SIGKILL x10")
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS)
    for _ in range(10):
        time.sleep(rig.random.uniform(1.0, 3.0))
        rig.replace_worker(sig=signal.SIGKILL)
        rig.result.faults += 1
    placing.join()
    rig.finish()


def test_every_task_message_delivered_twice(chaos: Chaos, tmp_path: Path) -> None:
    copies = tmp_path / "second-copies.log"
    copies.touch()
    rig = chaos("6. every task message twice", env=twice_env(copies))
    rig.stock_for(ORDERS)
    rig.place(ORDERS).join()
    rig.settle()
    rig.result.faults = len(copies.read_text().splitlines())
    assert rig.result.faults >= 5 * len(rig.accepted)  # placed, then at least 4 steps each
    rig.finish()


def test_graceful_deploy_restarts_every_worker(chaos: Chaos) -> None:
    rig = chaos("8. graceful deploy (SIGTERM)")
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS)
    for _ in range(2):  # two rolling deploys of both workers
        for _ in range(2):
            time.sleep(rig.random.uniform(3.0, 6.0))
            rig.replace_worker(sig=signal.SIGTERM)
            rig.result.faults += 1
    placing.join()
    rig.finish()


def test_poison_messages_are_dead_lettered_once(chaos: Chaos) -> None:
    rig = chaos("10. poison: undecodable + always raises")
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS)
    time.sleep(3)
    publish_undecodable(rig.broker_url)
    poison = app.send_task(TaskName.CHECK_INVENTORY.value, kwargs={"order_id": "poison"})
    rig.poisoned = rig.result.faults = 2
    placing.join()
    wait_until(lambda: rig.dead_letter_count() >= 2, timeout=120, what="both poison "
               "messages in the dead-letter queue", stack=rig.stack)
    starts = rig.starts(poison.id)
    time.sleep(5)
    assert rig.starts(poison.id) == starts <= get_settings().retry_max_attempts  # no loop
    alerts = rig.worker_metric("shop_dead_letters_total")
    assert alerts.get("undecodable", 0) >= 1, alerts
    assert alerts.get(TaskName.CHECK_INVENTORY.value, 0) >= 1, alerts
    rig.finish()
