"""Pacing calls to the payment provider: at most ``SHOP_STRIPE_MAX_RPS`` across workers.

Stripe allows 100 requests a second in live mode and 25 in test mode, per account; a
flash sale makes two or three calls per order. Each process that calls the provider
spaces its calls evenly at its share of the rate: ``SHOP_STRIPE_MAX_RPS`` divided by
``SHOP_PAYMENT_PROCESSES``, the number of processes consuming the ``payments`` queue
(a threads pool is one process; a prefork pool counts each child). The state lives in
each process, so pacing costs no round trip per call; the price is that the
division must be kept true when workers are added (see docs/deployment.md). A call
that would wait longer than ``MAX_PACING_WAIT`` is not made: the step is retried
later (``PaymentRateLimited``), so a busy provider never ties up a worker thread. A
429 from the provider itself is retried after its ``Retry-After``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from shop.payments.gateway import MAX_PACING_WAIT, PaymentGateway, PaymentRateLimited
from shop.payments.wrapped import WrappedGateway

T = TypeVar("T")


HEADROOM = 0.9  # calls are spaced for 90% of the share: jitter on the way to the provider
#                can bunch calls, and its limiter counts arrivals, not our departures


class Pacer:
    """Lets calls start at least ``1 / (rate * HEADROOM)`` seconds apart, whatever thread
    asks.

    A caller holds the turn while it sleeps until its start, so no two calls of this
    process ever start closer together than the interval, however late a thread wakes.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / (rate * HEADROOM)
        self._clock, self._sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait_turn(self, max_wait: float = MAX_PACING_WAIT) -> None:
        """Return when this call may start; ``PaymentRateLimited`` instead of waiting
        longer than ``max_wait`` (for the other threads' turns and this one's)."""
        started = self._clock()
        if not self._lock.acquire(timeout=max_wait):
            raise PaymentRateLimited("provider calls paced: every turn is taken",
                                     retry_after=max_wait)
        try:
            now = self._clock()
            wait = max(0.0, self._next - now)
            if now - started + wait > max_wait:
                raise PaymentRateLimited(f"provider calls paced: next turn in {wait:.1f}s",
                                         retry_after=wait)
            if wait:
                self._sleep(wait)
            self._next = self._clock() + self.interval
        finally:
            self._lock.release()


class PacedGateway(WrappedGateway):
    """A gateway whose every call waits for its turn."""

    def __init__(self, inner: PaymentGateway, pacer: Pacer) -> None:
        super().__init__(inner)
        self.pacer = pacer

    def around(self, op: str, call: Callable[[], T]) -> T:
        self.pacer.wait_turn()
        return call()
