"""Issue 18: a state machine that tries the interleavings of the real use cases.

Hypothesis places a few orders and then, in any order: delivers pending task messages
(any of them, maybe as a duplicate), delivers the provider's webhook events (any,
again), runs the sweeper, reconciliation and the 3-D Secure expiry, retries, cancels
and resends as an admin, arms provider faults (an outage, a lost answer, a 429, a
refusal, a worker killed after the call), lets another actor act while a provider call
is in flight, arms SMTP faults (4xx, 5xx), lets leases run out, lets the clock jump,
plays the customer (3-D Secure) and the provider (authorizations lapsing, refunds by
hand in the dashboard), refunds lines as an admin (restocked or not, keys reused,
posted twice), and plays the warehouse (issue 22: parcels, lines it cannot ship with
or without a shelf count, deliveries; its messages taken in any order, maybe twice).
``checks.check_always`` runs after every step; at the end ``World.settle`` drains
everything without faults and ``checks.check_settled`` runs.

Budget: ``SHOP_STATEMACHINE_EXAMPLES`` examples (25) of up to
``SHOP_STATEMACHINE_STEPS`` steps (30); ``make chaos`` runs 20 times as many examples.
Failing examples are kept in ``.hypothesis/statemachine`` and replayed first. A failure
is shrunk to a short sequence only with ``SHOP_STATEMACHINE_SHRINK=1`` (``make chaos``
sets it): shrinking a stateful failure can take minutes, too long for ``make test``.
``SHOP_STATEMACHINE_DB=postgres`` runs it on PostgreSQL (``SHOP_TEST_DATABASE_URL``).

What it found on today's code is replayed in ``test_regressions.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.statemachine import driver
from tests.statemachine.checks import check_always, check_settled

EXAMPLES = int(os.environ.get("SHOP_STATEMACHINE_EXAMPLES", "25"))
STEPS = int(os.environ.get("SHOP_STATEMACHINE_STEPS", "30"))
SHRINK = os.environ.get("SHOP_STATEMACHINE_SHRINK", "0") not in ("", "0")
EXAMPLE_DB = Path(__file__).resolve().parents[2] / ".hypothesis" / "statemachine"

SETTINGS = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=False,
    database=DirectoryBasedExampleDatabase(str(EXAMPLE_DB)), print_blob=True,
    phases=tuple(Phase) if SHRINK else (Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large])

CLOCK_JUMPS = (61, 360, 1_200, 3_660, 86_400, 6 * 86_400 + 60, 7 * 86_400 + 60)
picks = st.integers(min_value=0, max_value=7)
MAX_ARMED = 2  # faults waiting for their call, per kind
FAULT_TIMES = st.sampled_from([1, 2, 6])  # 6: more than a step's attempts (5)


class ShopMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world = driver.World()
        self.broken = False

    def check(self, check: Callable[[driver.Snapshot], None]) -> None:
        try:
            check(self.world.snapshot())
        except BaseException:
            self.broken = True  # no settling after a failed check: report that one
            raise

    # -- customers and workers -------------------------------------------------------

    @precondition(lambda self: self.world.can_place())
    @rule(basket=st.integers(0, len(driver.BASKETS) - 1),
          method=st.integers(0, len(driver.PAYMENT_METHODS) - 1))
    def place_order(self, basket: int, method: int) -> None:
        self.world.place_order(basket, method)

    @precondition(lambda self: self.world.pending_messages > 0)
    @rule(deliveries=st.lists(st.tuples(picks, st.sampled_from([False, False, True])),
                              min_size=1, max_size=6))
    def deliver(self, deliveries: list[tuple[int, bool]]) -> None:
        """Workers take pending messages in any order (0 is the oldest), maybe twice."""
        for pick, duplicate in deliveries:
            self.world.deliver(pick, duplicate=duplicate)

    @precondition(lambda self: self.world.pending_messages > 0)
    @rule(count=st.integers(1, 12))
    def workers_catch_up(self, count: int) -> None:
        """Workers take the oldest pending messages, one after the other."""
        for _ in range(count):
            self.world.deliver(0)

    @precondition(lambda self: self.world.event_count > 0)
    @rule(events=st.lists(picks, min_size=1, max_size=3))
    def webhooks(self, events: list[int]) -> None:
        """The provider delivers any of its events, in any order, maybe again."""
        for pick in events:
            self.world.accept_event(pick)

    @precondition(lambda self: self.world.event_count > 0)
    @rule()
    def webhooks_catch_up(self) -> None:
        """The provider delivers every event it has not delivered yet, in order."""
        self.world.accept_new_events()

    @precondition(lambda self: self.world.order_count > 0)
    @rule(pick=picks, success=st.booleans())
    def customer_authenticates(self, pick: int, success: bool) -> None:
        self.world.customer_authenticates(pick, success=success)

    @precondition(lambda self: self.world.order_count > 0)
    @rule(job=st.sampled_from(["sweep", "reconcile", "expire_authentications"]))
    def beat(self, job: str) -> None:
        getattr(self.world, job)()

    @precondition(lambda self: self.world.order_count > 0)
    @rule(minutes=st.sampled_from([6, 30, 90]))
    def beat_runs(self, minutes: int) -> None:
        """Time passes with beat running every six minutes, and no worker at work."""
        self.world.beat_runs(minutes)

    @precondition(lambda self: self.world.order_count > 0)
    @rule(action=st.sampled_from(["retry", "cancel", "resend email", "resend fulfillment"]),
          pick=picks)
    def admin(self, action: str, pick: int) -> None:
        if action == "retry":
            self.world.admin_retry(pick)
        elif action == "cancel":
            self.world.admin_cancel(pick)
        else:
            self.world.admin_resend(pick, email=action == "resend email")

    @precondition(lambda self: self.world.order_count > 0)
    @rule(pick=picks, quantities=st.lists(st.integers(0, 3), min_size=1, max_size=2),
          restocks=st.lists(st.booleans(), min_size=1, max_size=2),
          key=st.sampled_from([None, None, "a", "b"]), twice=st.booleans())
    def admin_refund(self, pick: int, quantities: list[int], restocks: list[bool],
                     key: str | None, twice: bool) -> None:
        """An admin refunds units of an order's lines, each restocked or not; a key may be
        used again (for the same refund, or another), and a post may come twice at once.
        (``meanwhile`` runs one in the middle of a provider call, a refund's included.)"""
        self.world.admin_refund(pick, quantities=tuple(quantities), restocks=tuple(restocks),
                                key=key, twice=twice)

    @precondition(lambda self: len(self.world.provider.faults) < MAX_ARMED)
    @rule(op=st.sampled_from(driver.PROVIDER_OPS), mode=st.sampled_from(driver.PROVIDER_FAULTS),
          times=FAULT_TIMES)
    def provider_fault(self, op: str, mode: str, times: int) -> None:
        """The next ``times`` calls of ``op`` (any call: "*") fail that way."""
        self.world.provider_fault(op, mode, times)

    @precondition(lambda self: self.world.order_count > 0
                  and len(self.world.provider.faults) < MAX_ARMED)
    @rule(op=st.sampled_from(driver.PROVIDER_OPS), kind=st.sampled_from(driver.ACTIONS),
          pick=picks)
    def meanwhile(self, op: str, kind: str, pick: int) -> None:
        """Concurrency: once the next ``op`` call took effect, and before its caller hears
        back, another worker, admin, job or the customer acts."""
        self.world.meanwhile(op, kind, pick)

    @precondition(lambda self: len(self.world.mailer.faults) < MAX_ARMED)
    @rule(kind=st.sampled_from(driver.SMTP_FAULTS), times=FAULT_TIMES)
    def smtp_fault(self, kind: str, times: int) -> None:
        self.world.smtp_fault(kind, times)

    @precondition(lambda self: self.world.order_count > 0)
    @rule(what=st.sampled_from(["leases expire", *CLOCK_JUMPS]))
    def time_passes(self, what: str | int) -> None:
        """Dead workers' leases run out, or the clock jumps (beat does not run meanwhile
        unless the machine says so)."""
        if what == "leases expire":
            self.world.expire_leases()
        else:
            self.world.advance_clock(float(what))

    @precondition(lambda self: self.world.order_count > 0)
    @rule(what=st.sampled_from(["authorizations lapse", "refund half", "refund all"]),
          pick=picks)
    def provider_on_its_own(self, what: str, pick: int) -> None:
        """Stripe lapses week-old authorizations; someone refunds a payment by hand in
        the dashboard."""
        if what == "authorizations lapse":
            self.world.lapse_authorizations()
        else:
            self.world.merchant_refunds(pick, whole=what == "refund all")

    # -- the warehouse -------------------------------------------------------------------

    @precondition(lambda self: bool(self.world.requests))
    @rule(pick=picks, plan=st.sampled_from(driver.WAREHOUSE_PLANS), count_shelf=st.booleans())
    def warehouse_answers(self, pick: int, plan: str, count_shelf: bool) -> None:
        """The warehouse ships a request (whole, one unit, in two parcels) or cannot ship
        a line (or any), maybe with its count of the shelf."""
        self.world.warehouse_answers(pick, plan, count_shelf)

    @precondition(lambda self: self.world.warehouse_pending > 0)
    @rule(deliveries=st.lists(st.tuples(picks, st.sampled_from([False, False, True])),
                              min_size=1, max_size=4))
    def warehouse_delivers(self, deliveries: list[tuple[int, bool]]) -> None:
        """The shop consumes the warehouse's messages in any order, maybe twice."""
        for pick, duplicate in deliveries:
            self.world.warehouse_delivers(pick, duplicate=duplicate)

    # -- the invariants ----------------------------------------------------------------

    @invariant()
    def always(self) -> None:
        self.check(check_always)

    def teardown(self) -> None:
        try:
            if not self.broken:
                self.world.settle()
                self.check(check_settled)
        finally:
            self.world.close()


def test_the_interleavings_keep_the_promises(clock: driver.Clock) -> None:
    run_state_machine_as_test(ShopMachine, settings=SETTINGS)
