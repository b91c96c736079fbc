"""One rate budget for the payment provider, shared by every process on every machine.

Stripe limits an account (100 requests/s live, 25 in a sandbox) and, by default, each
endpoint (25/s), where every named operation is its own endpoint: creating an intent,
retrieving one, confirming, capturing and cancelling one, and creating a refund. A
limit shared by processes is shared state, and the shop already has a store every
process reaches and trusts: its database. Each call takes a token from its endpoint's
bucket and from the account's bucket together, in one short transaction that locks
the two rows (in a fixed order) and reads the database's clock, so all machines agree
on time. No process keeps a share of its own, so adding workers needs no arithmetic.

- A bucket refills at its rate times ``HEADROOM`` (a margin for the provider counting
  arrivals, not our departures) up to a burst of the rest, so no second ever holds
  more calls than the nominal rate.
- Money already decided goes first: captures, refunds and cancels may empty the
  account's bucket; creates leave ``RESERVE`` of it to them.
- A call waits for its tokens at most ``MAX_PACING_WAIT``; beyond that it is not made
  and the step is retried later (``PaymentRateLimited``, uncounted), so a busy
  provider never ties up a worker thread for long.

The cost is one round trip to the database per provider call, about a millisecond,
against a provider call of 100 ms or more.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shop import metrics
from shop.db import insert_for
from shop.payments.gateway import (
    ENDPOINTS,
    MAX_PACING_WAIT,
    PaymentGateway,
    PaymentRateLimited,
)
from shop.payments.models import RateBucket
from shop.payments.wrapped import WrappedGateway

T = TypeVar("T")

HEADROOM = 0.9
RESERVE = 0.5  # of the account's burst, kept by creates for captures, refunds and cancels
ACCOUNT = "account"
FIRST = frozenset({"capture", "refund", "cancel"})


@dataclass(frozen=True, slots=True)
class Limits:
    account_rps: float
    endpoint_rps: float

    def rate(self, bucket: str) -> float:
        return (self.account_rps if bucket == ACCOUNT else self.endpoint_rps) * HEADROOM

    def reserve(self) -> float:
        """Tokens of the account's bucket that creates leave to captures, refunds and
        cancels: ``RESERVE`` of its burst, within what a create can still reach (a
        burst of one call has no room for a reserve)."""
        burst = self.burst(ACCOUNT)
        return max(0.0, min(burst * RESERVE, burst - 1.0))

    def burst(self, bucket: str) -> float:
        """What the margin leaves, at least one call: a bucket full at ``t`` plus a
        second's refill never exceeds the nominal rate in any second (25/s: 2.5)."""
        nominal = self.account_rps if bucket == ACCOUNT else self.endpoint_rps
        return max(1.0, nominal * (1 - HEADROOM))


class Budget:
    """Takes tokens for provider calls from the buckets in the database."""

    def __init__(self, *, sessions: sessionmaker[Session], limits: Limits,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.sessions, self.limits, self._sleep = sessions, limits, sleep

    def wait_turn(self, op: str, max_wait: float = MAX_PACING_WAIT) -> None:
        """Return once ``op`` may call the provider; ``PaymentRateLimited`` instead of
        waiting longer than ``max_wait``."""
        waited = 0.0
        while True:
            wait = self.take(op)
            if wait <= 0:
                return
            if waited + wait > max_wait:
                raise PaymentRateLimited(f"provider budget: {ENDPOINTS.get(op, op)} is at its "
                                         f"limit for {wait:.2f}s", retry_after=wait)
            self._sleep(wait)
            waited += wait

    def take(self, op: str) -> float:
        """Take the call's tokens now (0.0), or say how long until they are there."""
        names = sorted({ACCOUNT, ENDPOINTS.get(op, op)})
        reserve = 0.0 if op in FIRST else self.limits.reserve()
        with self.sessions() as session:
            now = _now(session)
            rows = self._locked(session, names, now)
            levels = {name: self._level(row, now) for name, row in rows.items()}
            need = {name: 1.0 + (reserve if name == ACCOUNT else 0.0) for name in names}
            short = max((need[n] - levels[n]) / self.limits.rate(n) for n in names)
            if short > 0:
                session.rollback()
                return short
            for name, row in rows.items():
                row.tokens, row.updated_at = levels[name] - 1.0, now
            session.commit()
        metrics.PROVIDER_BUDGET_HEADROOM.labels(bucket=ACCOUNT).set(levels[ACCOUNT] - 1.0)
        return 0.0

    def _locked(self, session: Session, names: list[str],
                now: dt.datetime) -> dict[str, RateBucket]:
        session.execute(insert_for(session, RateBucket.__table__)  # type: ignore[arg-type]
                        .values([{"name": n, "tokens": self.limits.burst(n), "updated_at": now}
                                 for n in names])
                        .on_conflict_do_nothing(index_elements=["name"]))  # type: ignore[attr-defined]
        found = session.scalars(select(RateBucket).where(RateBucket.name.in_(names))
                                .order_by(RateBucket.name).with_for_update()
                                .execution_options(populate_existing=True))
        return {row.name: row for row in found}

    def _level(self, row: RateBucket, now: dt.datetime) -> float:
        elapsed = max(0.0, (now - row.updated_at).total_seconds())
        return min(self.limits.burst(row.name),
                   row.tokens + elapsed * self.limits.rate(row.name))


def _now(session: Session) -> dt.datetime:
    """The database's clock on PostgreSQL (every machine agrees), this one's on SQLite
    (one machine, by construction)."""
    if session.get_bind().dialect.name == "postgresql":
        moment: dt.datetime | None = session.scalar(select(func.clock_timestamp()))
        if moment is not None:
            return moment.astimezone(dt.UTC)
    return dt.datetime.now(dt.UTC)


class BudgetedGateway(WrappedGateway):
    """A gateway whose every call first takes its tokens from the shared budget."""

    def __init__(self, inner: PaymentGateway, budget: Budget) -> None:
        super().__init__(inner)
        self.budget = budget

    def around(self, op: str, call: Callable[[], T]) -> T:
        self.budget.wait_turn(op)
        return call()
