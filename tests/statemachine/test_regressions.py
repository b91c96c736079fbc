"""What the state machine found (issue 18), replayed step by step as plain tests.

Each test drives ``driver.World`` through the sequence that broke an invariant on the
code before issue 18 (80485dc), then checks every invariant, the broken one last. Both
are finding 2 (a paid order's email lost to the sweeper's one-day window): the sweeper
now re-drives a confirmed order's missing email however old it is, then flags it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.statemachine import driver
from tests.statemachine.checks import (
    check_always,
    confirmed_orders_are_emailed_or_flagged,
    every_order_ends,
    everything_delivered,
    ledger_equals_provider,
    no_money_held_for_orders_that_want_none,
)

VISA, ONE_MUG = 0, 0  # driver.PAYMENT_METHODS[0], driver.BASKETS[0]
DAY = 86_400


@pytest.fixture
def world(clock: driver.Clock) -> Iterator[driver.World]:
    world = driver.World()
    yield world
    world.close()


def confirmed_order(world: driver.World) -> None:
    """One mug on a card that authorizes, through check, charge, reserve and capture;
    its email and warehouse request are queued (the email first)."""
    world.place_order(ONE_MUG, VISA)
    for _ in range(4):
        world.deliver(0)
    assert world.snapshot().orders[0].stage == "confirmed"


def settled_and_checked_email_last(world: driver.World) -> None:
    world.settle()
    snap = world.snapshot()
    check_always(snap)
    everything_delivered(snap)
    every_order_ends(snap)
    no_money_held_for_orders_that_want_none(snap)
    ledger_equals_provider(snap)
    confirmed_orders_are_emailed_or_flagged(snap)  # the one that failed before issue 18


def test_an_admin_resend_that_meets_a_mail_outage_is_lost_a_day_after_confirmation(
        world: driver.World) -> None:
    confirmed_order(world)
    world.smtp_fault("5xx")
    world.deliver(0)  # send_confirmation: 550, gives up at once: email_failed is flagged
    world.deliver(0)  # request_fulfillment
    world.advance_clock(2 * DAY)  # two days later an admin fixes the address
    world.admin_resend(0, email=True)  # resolves email_failed, queues the email again
    world.smtp_fault("4xx", times=5)  # the mail server says "try later" to every attempt
    for _ in range(5):
        world.deliver(0)  # 451 five times: gives up, "left to the sweeper"
    settled_and_checked_email_last(world)  # the sweeper runs every 6 minutes: skips it


def test_an_email_left_to_the_sweeper_is_lost_when_the_sweeper_comes_a_day_late(
        world: driver.World) -> None:
    confirmed_order(world)
    world.smtp_fault("4xx", times=5)
    for _ in range(5):
        world.deliver(0)  # send_confirmation: 451 five times, gives up, left to the sweeper
    world.deliver(0)  # request_fulfillment
    world.advance_clock(DAY + 60)  # beat does not run for a day
    settled_and_checked_email_last(world)
