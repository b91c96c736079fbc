"""The order workflow, one entry per step: everything about a step is in its entry.

    check_inventory -> charge_payment -> reserve_stock -> capture_payment
        -> { send_confirmation, request_fulfillment }

An entry says at which stage the step runs, on which queue and within which time
limits, which event of the transition table ends it well (what follows is whatever
runs at the stage that event leads to), what happens when its attempts run out, and
whether the sweeper resends it to an order that stopped moving. The canvas is data:
unlike a Celery ``chain``, the next message is written to the outbox in the same
transaction as the state change that earns it (``flow.continue_from``).

Tasks (``tasks.py``), the broker's routes (``shop.celery``), give-ups
(``giving_up.py``) and the sweeper (``sweeper.py``) are all derived from ``STEPS``;
an architecture test holds them to it. The jobs at the end of the table are not
steps of one order's chain (no stage); they are routed and limited the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shop.orders.attention import Kind
from shop.orders.states import Event, Stage, Step, next_stage
from shop.payments.gateway import CALL_TIMEOUT, MAX_CALLS_PER_STEP


class TaskName(StrEnum):
    """Every task of the order workflow: the one place its wire name is spelled."""

    CHECK_INVENTORY = "shop.orders.check_inventory"
    CHARGE_PAYMENT = "shop.orders.charge_payment"
    RESERVE_STOCK = "shop.orders.reserve_stock"
    CAPTURE_PAYMENT = "shop.orders.capture_payment"
    SEND_CONFIRMATION = "shop.orders.send_confirmation"
    REQUEST_FULFILLMENT = "shop.orders.request_fulfillment"
    # Compensation's provider half; the 0.1 wire name is kept so queued messages still run.
    RELEASE_PAYMENT = "shop.payments.void_payment"
    RESUME_STUCK = "shop.orders.resume_stuck_orders"
    RECONCILE = "shop.orders.reconcile_payments"
    HANDLE_PAYMENT_EVENT = "shop.orders.handle_payment_event"
    EXPIRE_AUTHENTICATIONS = "shop.orders.expire_authentications"
    # After confirmation: the customer told of each shipment, and of each unshippable line.
    SEND_SHIPMENT_EMAIL = "shop.orders.send_shipment_email"
    SEND_LINE_REFUND_EMAIL = "shop.orders.send_line_refund_email"
    REFUND_LINES = "shop.orders.refund_lines"  # one line refund's provider call


class GiveUp(StrEnum):
    """What a step does when its attempts run out."""

    FAIL = "fail"  # fail the order; compensation gives back what it holds
    HOLD = "hold"  # money's fate unknown: keep the order, flag it, reconciliation asks
    FLAG = "flag"  # a paid order's follow-up: flag it for a person
    RETRY_LATER = "retry_later"  # a job: its next run (or reconciliation) tries again


@dataclass(frozen=True, slots=True)
class Limits:
    soft: float  # seconds before SoftTimeLimitExceeded (a transient failure)
    hard: float  # seconds before the worker kills the task (its message is requeued)


DEFAULT_LIMITS = Limits(soft=45, hard=60)
# A payment step's provider calls fit in its soft limit (each call is bounded, paced
# included): the longest path makes MAX_CALLS_PER_STEP calls.
PAYMENT_LIMITS = Limits(soft=MAX_CALLS_PER_STEP * CALL_TIMEOUT + 5,
                        hard=MAX_CALLS_PER_STEP * CALL_TIMEOUT + 10)
JOB_LIMITS = Limits(soft=240, hard=270)


@dataclass(frozen=True, slots=True)
class StepSpec:
    task: TaskName
    queue: str
    limits: Limits = DEFAULT_LIMITS
    stage: Stage | None = None  # the stage the order must be at for the step to act
    done: Event | None = None  # the event that ends it well (None: a leaf of the canvas)
    give_up: GiveUp = GiveUp.RETRY_LATER
    fails_as: tuple[Step, str] | None = None  # GiveUp.FAIL: the failure step and reason
    flags: tuple[Kind, str] | None = None  # GiveUp.FLAG: the attention item and its text
    swept: bool = False  # the sweeper resends it to an order that stopped at its stage
    outage_to_sweeper: bool = False  # a "try later" outage at give-up: the sweeper resends


STEPS: tuple[StepSpec, ...] = (
    StepSpec(TaskName.CHECK_INVENTORY, "intake", stage=Stage.PLACED,
             done=Event.INVENTORY_CONFIRMED, give_up=GiveUp.FAIL,
             fails_as=(Step.INVENTORY, "timeout"), swept=True),
    StepSpec(TaskName.CHARGE_PAYMENT, "payments", PAYMENT_LIMITS, stage=Stage.IN_STOCK,
             done=Event.PAYMENT_AUTHORIZED, give_up=GiveUp.FAIL,
             fails_as=(Step.PAYMENT, "payment_unavailable"), swept=True),
    StepSpec(TaskName.RESERVE_STOCK, "orders", stage=Stage.AUTHORIZED,
             done=Event.STOCK_RESERVED, give_up=GiveUp.FAIL,
             fails_as=(Step.RESERVATION, "timeout"), swept=True),
    StepSpec(TaskName.CAPTURE_PAYMENT, "settlements", PAYMENT_LIMITS, stage=Stage.RESERVED,
             done=Event.PAYMENT_CAPTURED, give_up=GiveUp.HOLD, swept=True),
    StepSpec(TaskName.SEND_CONFIRMATION, "notifications", stage=Stage.CONFIRMED,
             give_up=GiveUp.FLAG, swept=True, outage_to_sweeper=True,
             flags=(Kind.EMAIL_FAILED, "the confirmation email failed")),
    StepSpec(TaskName.REQUEST_FULFILLMENT, "orders", stage=Stage.CONFIRMED,
             give_up=GiveUp.FLAG, swept=True,
             flags=(Kind.FULFILLMENT_FAILED, "the warehouse request failed")),
    # Jobs: not a stage of the chain.
    StepSpec(TaskName.RELEASE_PAYMENT, "settlements", PAYMENT_LIMITS, give_up=GiveUp.FLAG,
             flags=(Kind.RELEASE_FAILED, "the payment could not be released at the provider")),
    StepSpec(TaskName.HANDLE_PAYMENT_EVENT, "payments", PAYMENT_LIMITS),
    StepSpec(TaskName.RESUME_STUCK, "orders"),
    StepSpec(TaskName.RECONCILE, "payments", JOB_LIMITS),
    StepSpec(TaskName.EXPIRE_AUTHENTICATIONS, "payments", JOB_LIMITS),
    StepSpec(TaskName.SEND_SHIPMENT_EMAIL, "notifications", give_up=GiveUp.FLAG,
             flags=(Kind.EMAIL_FAILED, "a shipping email failed")),
    StepSpec(TaskName.SEND_LINE_REFUND_EMAIL, "notifications", give_up=GiveUp.FLAG,
             flags=(Kind.EMAIL_FAILED, "a line-refund email failed")),
    StepSpec(TaskName.REFUND_LINES, "settlements", PAYMENT_LIMITS, give_up=GiveUp.FLAG,
             flags=(Kind.REFUND_FAILED, "the line refund did not go through")),
)

SPEC: dict[TaskName, StepSpec] = {spec.task: spec for spec in STEPS}

NEXT_AFTER: dict[Stage, tuple[TaskName, ...]] = {
    stage: tuple(spec.task for spec in STEPS if spec.stage is stage)
    for stage in Stage if any(spec.stage is stage for spec in STEPS)}


def follows(task: TaskName) -> tuple[TaskName, ...]:
    """The steps that run after ``task`` ends well."""
    spec = SPEC[task]
    if spec.stage is None or spec.done is None:
        return ()
    return NEXT_AFTER.get(next_stage(spec.stage, spec.done), ())


def routes() -> dict[str, str]:
    """Task name → queue, for the broker."""
    return {spec.task.value: spec.queue for spec in STEPS}


def swept_at(stage: Stage) -> tuple[TaskName, ...]:
    """The steps the sweeper resends to an order that stopped at ``stage``."""
    return tuple(spec.task for spec in STEPS if spec.stage is stage and spec.swept)
