"""The chaos suite's fast subset, run by plain ``pytest`` (``make test``) so that CI
guards the promises on every change: fewer orders, the same rig and checks."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from shop.celery import app
from shop.orders.workflow.table import TaskName
from tests.chaos.faults import publish_undecodable, twice_env
from tests.chaos.rig import Rig
from tests.fixtures.stack import wait_until

pytestmark = [pytest.mark.chaos_smoke, pytest.mark.slow, pytest.mark.postgres,
              pytest.mark.rabbitmq]

ORDERS = 40
Chaos = Callable[..., Rig]


def test_smoke_every_task_message_twice_charges_and_mails_once(chaos: Chaos,
                                                               tmp_path: Path) -> None:
    copies = tmp_path / "second-copies.log"
    copies.touch()
    rig = chaos("smoke: every task message twice", env=twice_env(copies))
    rig.stock_for(ORDERS)
    rig.place(ORDERS, rate=10).join()
    rig.settle()
    rig.result.faults = len(copies.read_text().splitlines())
    assert rig.result.faults >= 5 * len(rig.accepted)
    rig.finish()


def test_smoke_three_worker_kills_lose_nothing(chaos: Chaos) -> None:
    rig = chaos("smoke: worker SIGKILL x3")
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS, rate=10)
    rig.replace_workers(3, sig=signal.SIGKILL, pause=(0.8, 1.5))
    placing.join()
    rig.finish()


def test_smoke_poison_ends_in_the_dead_letter_queue(chaos: Chaos) -> None:
    rig = chaos("smoke: poison")
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS, rate=10)
    publish_undecodable(rig.broker_url)
    app.send_task(TaskName.CHECK_INVENTORY.value, kwargs={"order_id": "poison"})
    rig.poisoned = rig.result.faults = 2
    placing.join()
    wait_until(lambda: rig.dead_letter_count() >= 2, timeout=60, what="the poison messages "
               "in the dead-letter queue", stack=rig.stack)
    rig.finish()
