"""How large the payments worker's thread pool must be for a rate and a provider latency.

A payment step holds its thread for the whole provider call, so the calls in flight at
once are the threads needed (Little's law): orders/s x calls per order x (provider
latency + the step's own work), plus, for each create, the short sleep until its slot
in the shared budget (``SLOT_WAIT`` on average at the ceiling), and ``MARGIN`` for
retries and uneven arrivals. Fewer threads than that and the pool, not the provider,
sets the rate; the budget (``shop.payments.budget``) already keeps the rate within the
provider's, so more threads cost only idle memory and database connections (one each:
``SHOP_DB_POOL_SIZE`` at least as large).

``shop sizing`` prints these figures for the deployment's settings; the payments
worker's ``--concurrency`` and ``SHOP_DB_POOL_SIZE`` come from ``shop sizing --threads``
(deploy/docker-compose.yml, deploy/systemd/worker-payments.env).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shop.payments.budget import Limits

CALLS_PER_ORDER = 2  # create-and-confirm, capture (tests/integration/test_cost_per_order.py)
STEP_SECONDS = 0.05  # a payment step's own database and broker work around its call
MARGIN = 1.5
SLOT_WAIT = 0.25  # a create's average sleep until its booked slot when the budget is the wall
STRIPE_LIVE = Limits(account_rps=100.0, endpoint_rps=25.0)
DEFAULT_LATENCY_MS = 300


@dataclass(frozen=True, slots=True)
class Sizing:
    orders_per_second: float
    latency_ms: float
    threads: int

    @property
    def calls_per_second(self) -> float:
        return self.orders_per_second * CALLS_PER_ORDER


def ceiling(limits: Limits) -> float:
    """Orders a second the budget lets through: one create per order on the create
    endpoint, ``CALLS_PER_ORDER`` calls per order on the account (after the headroom)."""
    return min(limits.rate("create_intent"), limits.rate("account") / CALLS_PER_ORDER)


def threads(orders_per_second: float, latency_ms: float) -> int:
    """Threads the payments worker needs for ``orders_per_second`` at ``latency_ms`` per
    provider call (at least 2)."""
    per_order = CALLS_PER_ORDER * (latency_ms / 1000 + STEP_SECONDS) + SLOT_WAIT
    return max(2, math.ceil(orders_per_second * per_order * MARGIN - 1e-9))


def size(limits: Limits | None, *, latency_ms: float,
         orders_per_second: float | None = None) -> Sizing:
    """The pool for ``orders_per_second`` (unset: the budget's ceiling; with no budget,
    Stripe's live one), never above what the budget lets through."""
    top = ceiling(limits or STRIPE_LIVE)
    rate = top if orders_per_second is None else min(orders_per_second, top)
    return Sizing(orders_per_second=rate, latency_ms=latency_ms,
                  threads=threads(rate, latency_ms))
