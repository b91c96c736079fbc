"""What each workflow task does when its attempts run out, as its table entry says.

Never "fail and hope": a give-up that decides about money waits for the order's
lease, so it cannot race a provider call still in flight (``OrderBusy`` retries it
shortly). ``GiveUp.HOLD`` (a capture whose outcome is unknown) keeps the order for
reconciliation, never fails it; ``GiveUp.FLAG`` (a paid order's missing email or
warehouse request, a release that did not go through) opens an attention item for a
person; ``GiveUp.FAIL`` fails the order, which compensation undoes.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.orm import Session

from shop import metrics
from shop.exceptions import InvariantBroken, TransientError
from shop.orders import attention, lease
from shop.orders.queries import load
from shop.orders.states import Stage
from shop.orders.workflow.steps import at_stage, fail_step
from shop.orders.workflow.table import SPEC, GiveUp, TaskName

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


def give_up(session: Session, *, task: TaskName, order_id: uuid.UUID,
            error: Exception | str, owner: str, attempt: int | None = None) -> None:
    """Fail, hold or flag the order, as ``task``'s entry in the step table says."""
    spec = SPEC[task]
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"[:500]
    log.warning("%s gave up on order %s: %s", task, order_id, text)
    if spec.stage is not None and at_stage(session, order_id=order_id,
                                           stage=spec.stage) is None:
        return  # the order moved on meanwhile: nothing to give up
    session.commit()
    if spec.give_up is GiveUp.HOLD:
        with lease.hold(session, order_id=order_id, owner=owner):
            hold_for_reconciliation(session, order_id=order_id, error=text)
    elif spec.give_up is GiveUp.FAIL:
        if spec.fails_as is None or spec.stage is None:
            raise InvariantBroken(f"{task}: a step that fails orders names its failure")
        step, reason = spec.fails_as
        with lease.hold(session, order_id=order_id, owner=owner):
            if at_stage(session, order_id=order_id, stage=spec.stage) is not None:
                fail_step(session, order_id=order_id, step=step, reason=reason, message=text)
    elif spec.give_up is GiveUp.FLAG:
        if spec.outage_to_sweeper and isinstance(error, TransientError):
            log.warning("%s for %s still refused (%s): left to the sweeper", task, order_id,
                        text)
            return
        _flag(session, task=task, order_id=order_id, error=text, attempt=attempt)


def _flag(session: Session, *, task: TaskName, order_id: uuid.UUID, error: str,
          attempt: int | None) -> None:
    flags = SPEC[task].flags
    if flags is None:
        raise InvariantBroken(f"{task}: a step that flags orders names its flag")
    kind, what = flags
    if task is TaskName.RELEASE_PAYMENT:
        metrics.on_commit(session, metrics.RELEASE_FAILURES.inc)
    attention.flag(session, order_id=order_id, kind=kind, message=f"{what}: {error}"[:500])
    order = load(session, order_id=order_id)
    if order is not None:
        order.record(f"{kind}", internal={"error": error, "attempt": attempt})
    session.commit()
