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
- A keyed call (one with an idempotency key: a create, a capture, a refund) whose turn
  is further off than ``HOLD``, or that has waited ``HOLD`` among others, books a
  *slot*: the endpoint's token is taken for that moment and a row
  ``slot:<hash of the key>`` remembers it, and the step is retried just
  before it (``PaymentRateLimited`` with ``exact``; not counted as a failure). The
  retried step finds its booking and uses it at its moment; one that comes back more
  than ``LATE`` after its slot takes a fresh one (a slot is a moment, so late calls never bunch).
  A thousand orders queued behind the create endpoint thus cost two runs of the
  payment step each, not one every few seconds, and a worker thread never sits for
  long on a call that is not due.
- A keyless call (a retrieve) waits at most ``MAX_PACING_WAIT``; beyond that it is not
  made and the step is retried later.

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
HOLD = 0.5  # the longest a keyed call sleeps in its thread for its slot; further: booked
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
        """Return once ``op`` may call the provider. ``PaymentRateLimited`` instead of
        waiting longer than ``max_wait`` (a keyed call: ``HOLD``), after booking the
        keyed call's slot; its ``retry_after`` is then the time to come back."""
        hold = min(max_wait, HOLD) if key is not None else max_wait
        waited = 0.0
        while True:
            wait, far = self._turn(op, key=key, hold=hold)
            if wait <= 0:
                return
            if key is not None and not far and waited + wait > hold:
                # waited its fill among others: book the slot instead (behind it, the
                # next callers book theirs, and the queue forms in the budget)
                wait, far = self._turn(op, key=key, hold=hold, book=True)
                if wait <= 0:
                    return
            endpoint = ENDPOINTS.get(op, op)
            if far:
                raise PaymentRateLimited(
                    f"provider budget: {endpoint} booked in {wait:.2f}s",
                    retry_after=max(0.0, wait - hold / 2), exact=True)
            if waited + wait > hold:
                raise PaymentRateLimited(f"provider budget: {endpoint} is at its limit for "
                                         f"{wait:.2f}s", retry_after=wait)
            self._sleep(wait)
            waited += wait

    def take(self, op: str) -> float:
        """Take the call's tokens now (0.0), or say how long until they are there."""
        return self._turn(op, key=None, hold=float("inf"))[0]

    def _turn(self, op: str, *, key: str | None, hold: float,
              book: bool = False) -> tuple[float, bool]:
        """Take the tokens now (0.0), or the time until they are there, and whether the
        keyed call's slot is booked (further than ``hold`` away, or when ``book``)."""
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
                return 0.0, False
            if slot is None or booking is not None or not (waits[endpoint] > hold or book):
                session.rollback()
                return wait, booking is not None and (wait > hold or book)
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
            return wait, True

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
