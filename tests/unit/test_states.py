"""The order transition table: every row, and everything outside it."""

from __future__ import annotations

import itertools

import pytest

from shop.exceptions import InvariantBroken
from shop.orders.models import Order
from shop.orders.states import (
    TRANSITIONS,
    Event,
    IllegalTransition,
    OrderStatus,
    Stage,
    Step,
    next_stage,
)
from tests.factories.orders import OrderFactory


def new_order(stage: Stage) -> Order:
    """An order at ``stage`` with an empty timeline, in memory only."""
    return OrderFactory.build(stage=stage, events=[])


@pytest.mark.parametrize(("start", "event"), list(TRANSITIONS), ids=lambda x: str(x))
def test_every_row_of_the_table_moves_the_order_and_records_it(start: Stage,
                                                               event: Event) -> None:
    order = new_order(start)
    target = TRANSITIONS[(start, event)]
    failure = (Step.PAYMENT, "card_declined", "declined") if target is Stage.FAILED else None
    order.apply(event, failure=failure)
    assert order.stage == target
    assert order.status == target.status
    assert order.events[-1].type == event.value
    if target is Stage.FAILED:
        assert (order.failure_step, order.failure_reason) == ("payment", "card_declined")
    else:
        assert order.failure_step is None


ILLEGAL = [(s, e) for s, e in itertools.product(Stage, Event) if (s, e) not in TRANSITIONS]


@pytest.mark.parametrize(("start", "event"), ILLEGAL, ids=lambda x: str(x))
def test_moves_outside_the_table_are_refused_and_change_nothing(start: Stage,
                                                                event: Event) -> None:
    order = new_order(start)
    with pytest.raises(IllegalTransition):
        order.apply(event)
    assert order.stage == start
    assert order.events == []


def test_terminal_stages_only_leave_by_retry_or_cancel() -> None:
    assert next_stage(Stage.FAILED, Event.RETRIED) is Stage.PLACED
    assert next_stage(Stage.CONFIRMED, Event.CANCELLED) is Stage.CANCELLED
    assert not [k for k in TRANSITIONS if k[0] is Stage.CANCELLED]


def test_every_stage_shows_a_contract_status() -> None:
    assert {stage.status for stage in Stage} == set(OrderStatus)


def test_a_failure_must_say_step_reason_and_message() -> None:
    # A project exception, not an assert: the rule holds under ``python -O`` too.
    with pytest.raises(InvariantBroken):
        new_order(Stage.PLACED).apply(Event.INVENTORY_SHORT)
