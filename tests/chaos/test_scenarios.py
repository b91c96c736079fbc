"""The fault-injection scenarios of issue 13 (``make chaos``): each places orders
through the real API, injects one kind of fault, and counts broken promises."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.chaos.rig import ORDERS, Rig

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
