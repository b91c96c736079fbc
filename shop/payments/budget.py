"""One rate budget for the payment provider, shared by every process on every machine.

Stripe limits an account (100 requests/s live, 25 in a sandbox) and, by default, each
endpoint (25/s), where every named operation is its own endpoint: creating an intent,
retrieving one, confirming, capturing and cancelling one, and creating a refund. A
limit shared by processes is shared state, and the shop already has a store every
process reaches and trusts: its database. Each call takes a token from its endpoint's
bucket and from the account's bucket together, in one short transaction that locks
the two rows (in a fixed order) and reads the database's clock once it holds them, so
all machines agree on time. No process keeps a share of its own, so adding workers
needs no arithmetic.

- A bucket refills at its rate times ``HEADROOM`` (a margin for the provider counting
  arrivals, not our departures) up to a burst of the rest, at least one call, so no
  second ever holds more calls than the nominal rate.
- A call takes its tokens when they are there, and goes at once; until then it sleeps
  the time they need and looks again. A call is never sent on tokens taken earlier
  than the moment it leaves, so a late thread cannot bunch calls together.
- Money already decided goes first: captures, refunds and cancels may empty the
  account's bucket; creates leave ``RESERVE`` of it to them.
- A keyed call (one with an idempotency key: a create, a capture, a refund) that must
  wait *books* the endpoint's next slot when it is due within what is left of the
  call's wait: the endpoint's token is taken for that moment, a row
  ``slot:<hash of the key>`` remembers it, and the thread sleeps until then and uses
  it. Callers behind a busy endpoint thus queue in the budget, first come first
  served, at one transaction to book and one to go, instead of polling in a herd. A
  booking come back to more than ``LATE`` after its slot (its thread woke late) takes
  a fresh one: a slot is a moment, so late calls never bunch.
- A call whose turn is further off than the longest it may wait (``MAX_PACING_WAIT``,
  within the step's time limit) books nothing: it sleeps that long (the pool's thread
  is the backpressure, and no token is held for a moment nobody may come back at),
  looks once more, and is then not made; the step is retried later
  (``PaymentRateLimited``, not counted as a failure). A slot booked for a step retried
  through the broker would come back behind the queue it left, late, and be lost.

The cost is one round trip to the database per provider call (two for a booked one),
about a millisecond each, against a provider call of 100 ms or more.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import delete, func, select
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
LATE = 0.05  # a booking come back to later than this after its slot is void: calls made
# late on the slots they booked would reach the provider together, over its limit
SLOT = "slot:"  # the name prefix of a booked slot's row
STALE_SLOT = dt.timedelta(hours=1)  # a booking nobody came back for is deleted after this


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


def slot_name(key: str) -> str:
    """The row that books a slot for the call with idempotency key ``key``."""
    return SLOT + hashlib.sha256(key.encode()).hexdigest()[:48]


class Budget:
    """Takes tokens for provider calls from the buckets in the database."""

    def __init__(self, *, sessions: sessionmaker[Session], limits: Limits,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.sessions, self.limits, self._sleep = sessions, limits, sleep

    def wait_turn(self, op: str, max_wait: float = MAX_PACING_WAIT,
                  key: str | None = None) -> None:
        """Return once ``op`` may call the provider: at once, or after sleeping until its
        booked slot (a keyed call) or until its tokens are there. ``PaymentRateLimited``
        instead of waiting longer than ``max_wait`` in all; its ``retry_after`` is then
        the time the tokens still need."""
        waited = 0.0
        while True:
            left = max_wait - waited
            wait = self._turn(op, key=key, within=left)
            if wait <= 0:
                return
            if left <= 0:
                raise PaymentRateLimited(f"provider budget: {ENDPOINTS.get(op, op)} is at "
                                         f"its limit for {wait:.2f}s", retry_after=wait)
            self._sleep(min(wait, left))
            waited += min(wait, left)

    def take(self, op: str) -> float:
        """Take the call's tokens now (0.0), or say how long until they are there."""
        return self._turn(op, key=None, within=0.0)

    def _turn(self, op: str, *, key: str | None, within: float) -> float:
        """Take the tokens now (0.0), or the time until they are there; a keyed call's
        slot is booked for that moment if it is no further than ``within``."""
        endpoint = ENDPOINTS.get(op, op)
        buckets = sorted({ACCOUNT, endpoint})
        slot = slot_name(key) if key is not None else None
        reserve = 0.0 if op in FIRST else self.limits.reserve()
        with self.sessions() as session:
            rows = self._locked(session, buckets, [slot] if slot else [])
            now = _now(session)
            booking = rows.pop(slot, None) if slot else None
            stale = None
            if booking is not None and (now - booking.updated_at).total_seconds() > LATE:
                stale, booking = booking, None  # its slot went by unused: take a fresh one
            levels = {name: self._level(rows[name], now) for name in buckets}
            need = {name: 1.0 + (reserve if name == ACCOUNT else 0.0) for name in buckets}
            waits = {n: max(0.0, (need[n] - levels[n]) / self.limits.rate(n)) for n in buckets}
            if booking is not None:  # the endpoint's token was taken when it was booked
                waits[endpoint] = max(0.0, (booking.updated_at - now).total_seconds())
            wait = max(waits.values())
            if wait <= 0:
                paying = [ACCOUNT] if booking is not None else buckets
                for name in paying:
                    self._spend(rows[name], levels[name], now)
                if booking is not None or stale is not None:
                    session.delete(booking or stale)
                session.commit()
                metrics.PROVIDER_BUDGET_HEADROOM.labels(bucket=ACCOUNT).set(
                    levels[ACCOUNT] - 1.0)
                return 0.0
            if slot is None or booking is not None or not 0 < waits[endpoint] <= within:
                session.rollback()
                return wait
            # Book the endpoint's slot; the account's token is taken when it is used.
            self._spend(rows[endpoint], levels[endpoint], now)
            session.execute(delete(RateBucket).where(RateBucket.name.startswith(SLOT),
                                                     RateBucket.name != slot,
                                                     RateBucket.updated_at < now - STALE_SLOT)
                            .execution_options(synchronize_session=False))
            at = now + dt.timedelta(seconds=waits[endpoint])
            if stale is not None:
                stale.updated_at = at
            else:
                session.add(RateBucket(name=slot, tokens=0.0, updated_at=at))
            session.commit()
            return wait

    def _locked(self, session: Session, buckets: list[str],
                slots: list[str]) -> dict[str, RateBucket]:
        now = func.clock_timestamp() if session.get_bind().dialect.name == "postgresql" \
            else dt.datetime.now(dt.UTC)
        session.execute(insert_for(session, RateBucket.__table__)  # type: ignore[arg-type]
                        .values([{"name": n, "tokens": self.limits.burst(n), "updated_at": now}
                                 for n in buckets])
                        .on_conflict_do_nothing(index_elements=["name"]))  # type: ignore[attr-defined]
        found = session.scalars(select(RateBucket)
                                .where(RateBucket.name.in_([*buckets, *slots]))
                                .order_by(RateBucket.name).with_for_update()
                                .execution_options(populate_existing=True))
        return {row.name: row for row in found}

    def _level(self, row: RateBucket, now: dt.datetime) -> float:
        elapsed = max(0.0, (now - row.updated_at).total_seconds())
        return min(self.limits.burst(row.name),
                   row.tokens + elapsed * self.limits.rate(row.name))

    @staticmethod
    def _spend(row: RateBucket, level: float, now: dt.datetime) -> None:
        row.tokens, row.updated_at = level - 1.0, max(now, row.updated_at)


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

    def around(self, op: str, call: Callable[[], T], key: str | None = None) -> T:
        self.budget.wait_turn(op, key=key)
        return call()
