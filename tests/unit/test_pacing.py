"""Pacing provider calls: starts at least an interval apart, and a refusal instead of a
long wait."""

from __future__ import annotations

import pytest

from shop.config import Settings
from shop.payments.gateway import PaymentRateLimited
from shop.payments.pacing import HEADROOM, Pacer


class Clock:
    """A clock that only moves when someone sleeps on it (or a test moves it)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.starts: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def paced(rate: float) -> tuple[Pacer, Clock]:
    """A pacer whose interval is exactly ``1 / rate`` (its headroom taken out)."""
    clock = Clock()
    return Pacer(rate=rate / HEADROOM, clock=clock, sleep=clock.sleep), clock


def test_calls_start_an_interval_apart() -> None:
    pacer, clock = paced(4)
    for _ in range(4):
        pacer.wait_turn()
        clock.starts.append(clock.now)
    assert clock.starts == pytest.approx([100.0, 100.25, 100.5, 100.75])
    clock.now += 5  # idle: no bank of turns builds up, the next starts at once
    pacer.wait_turn()
    assert clock.now == pytest.approx(105.75)


def test_a_late_waker_pushes_the_next_turn_back() -> None:
    pacer, clock = paced(4)
    pacer.wait_turn()
    clock.now += 0.3  # this call's thread ran late
    pacer.wait_turn()
    started = clock.now
    pacer.wait_turn()
    assert clock.now - started == pytest.approx(0.25)


def test_a_turn_further_off_than_the_longest_wait_is_refused_not_queued() -> None:
    pacer, clock = paced(0.25)  # one call every 4 s
    pacer.wait_turn(max_wait=2)
    with pytest.raises(PaymentRateLimited) as refused:
        pacer.wait_turn(max_wait=2)
    assert refused.value.retry_after == pytest.approx(4.0)
    assert Pacer(rate=10).interval == pytest.approx(1 / 9)  # 90% of the share
    assert clock.now == 100.0  # the refused call did not wait


def test_each_process_takes_its_share_of_stripes_limits() -> None:
    test_key = Settings(stripe_api_key="sk_test_x", payment_processes=5)
    live_key = Settings(stripe_api_key="sk_live_x")
    assert (test_key.provider_rate, live_key.provider_rate) == (5.0, 90.0)
    assert Settings(stripe_max_rps=40, payment_processes=4).provider_rate == 10.0
    assert Settings().provider_rate is None  # the dummy provider is not paced by default
