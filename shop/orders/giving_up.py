"""What each workflow task does when its attempts run out.

Never "fail and hope": a step that decides about money waits for the order's lease,
so a give-up cannot race a provider call still in flight (``OrderBusy`` retries it
shortly). A capture whose outcome is unknown is held for reconciliation, never
failed; a paid order's missing email or warehouse request is flagged for a person;
other steps fail the order, which compensation undoes.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.orm import Session

from shop import metrics
from shop.orders import attention
from shop.orders.states import Stage, Step
from shop.orders.steps import at_stage, end_lease, fail_step, leased
from shop.orders.workflow import NEXT_AFTER, TaskName, load

log = logging.getLogger(__name__)


def hold_for_reconciliation(session: Session, *, order_id: uuid.UUID, error: str) -> None:
    """A capture whose outcome is unknown: keep the order (and its stock) as it is, and
    let reconciliation ask the provider until it says what happened."""
    order = at_stage(session, order_id=order_id, stage=Stage.RESERVED)
    if order is None:
        return
    attention.flag(session, order_id=order_id, kind=attention.Kind.PAYMENT_UNKNOWN,
                   message="The capture's outcome is unknown; reconciliation keeps asking "
                           "the payment provider")
    order.record("payment.outcome_unknown", internal={"error": error})
    session.commit()


def give_up(session: Session, *, task: TaskName, order_id: uuid.UUID, error: str,
            owner: str, attempt: int | None = None) -> None:
    """What each task does when its attempts run out: fail, hold, or flag for a person.

    Payment decisions wait for the order's lease, so a give-up cannot race a call that
    is still in flight (``OrderBusy`` retries it shortly).
    """
    log.warning("%s gave up on order %s: %s", task, order_id, error)
    stage = STAGE_OF_TASK.get(task)
    if stage is not None and at_stage(session, order_id=order_id, stage=stage) is None:
        return  # the order moved on meanwhile: nothing to give up
    session.commit()
    if task is TaskName.CAPTURE_PAYMENT:
        with leased(session, order_id=order_id, owner=owner):
            hold_for_reconciliation(session, order_id=order_id, error=error)
        end_lease(session, order_id=order_id, owner=owner)
        return
    if task in _FAILS:
        step, reason = _FAILS[task]
        with leased(session, order_id=order_id, owner=owner):
            if at_stage(session, order_id=order_id, stage=stage) is not None:  # type: ignore[arg-type]
                fail_step(session, order_id=order_id, step=step, reason=reason, message=error)
        end_lease(session, order_id=order_id, owner=owner)
        return
    kind, what = _FLAGS[task]
    if task is TaskName.RELEASE_PAYMENT:
        metrics.on_commit(session, metrics.RELEASE_FAILURES.inc)
    attention.flag(session, order_id=order_id, kind=kind, message=f"{what}: {error}"[:500])
    order = load(session, order_id=order_id)
    if order is not None:
        order.record(f"{kind}", internal={"error": error, "attempt": attempt})
    session.commit()


STAGE_OF_TASK: dict[TaskName, Stage] = {
    task: stage for stage, tasks in NEXT_AFTER.items() if not stage.terminal for task in tasks}
_FAILS: dict[TaskName, tuple[Step, str]] = {
    TaskName.CHECK_INVENTORY: (Step.INVENTORY, "timeout"),
    TaskName.CHARGE_PAYMENT: (Step.PAYMENT, "payment_unavailable"),
    TaskName.RESERVE_STOCK: (Step.RESERVATION, "timeout"),
}
_FLAGS: dict[TaskName, tuple[attention.Kind, str]] = {
    TaskName.SEND_CONFIRMATION: (attention.Kind.EMAIL_FAILED, "the confirmation email failed"),
    TaskName.REQUEST_FULFILLMENT: (attention.Kind.FULFILLMENT_FAILED,
                                   "the warehouse request failed"),
    TaskName.RELEASE_PAYMENT: (attention.Kind.RELEASE_FAILED,
                               "the payment could not be released at the provider"),
}
