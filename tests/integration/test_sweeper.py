"""The sweeper: stuck orders resent, bounded, and paid orders never out of sight."""


from __future__ import annotations

from sqlalchemy.orm import Session

from shop.orders.workflow import steps, sweeper
from shop.orders.workflow.table import TaskName
from tests.fakes import FakeGateway
from tests.fixtures.outcomes import (
    open_flags,
    placed,
    queued,
    reload,
    to_reserved,
)


def test_a_sweep_never_loops_forever(session: Session, gateway: FakeGateway) -> None:
    order = placed(session)
    for _ in range(sweeper.MAX_RESUMES):
        sweeper.resume_stuck(session, older_than=0)
    assert reload(session, order.id).resumes == sweeper.MAX_RESUMES
    sweeper.resume_stuck(session, older_than=0)
    failed = reload(session, order.id)
    assert (failed.status, failed.failure_step, failed.failure_reason) == (
        "failed", "inventory", "timeout")
    assert sweeper.resume_stuck(session, older_than=0) == 0
    resumed = [e for e in failed.events if e.type == "workflow.resumed"]
    assert len(resumed) == sweeper.MAX_RESUMES


def test_a_stuck_capture_is_handed_to_reconciliation_not_failed(
        session: Session, gateway: FakeGateway) -> None:
    order = placed(session)
    to_reserved(session, order.id, gateway)
    for _ in range(sweeper.MAX_RESUMES + 1):
        sweeper.resume_stuck(session, older_than=0)
    held = reload(session, order.id)
    assert (held.stage, open_flags(session, order.id)) == ("reserved", {"payment_unknown"})
    assert sweeper.resume_stuck(session, older_than=0) == 0  # reconciliation's now


def test_a_confirmed_order_missing_its_email_and_request_is_re_driven_then_flagged(
        session: Session, gateway: FakeGateway) -> None:
    order = placed(session)
    to_reserved(session, order.id, gateway)
    steps.capture_payment(session, order_id=order.id, gateway=gateway, owner="a")
    before = len(queued(session))
    assert sweeper.resume_stuck(session, older_than=0) == 1
    assert queued(session)[before:] == [TaskName.SEND_CONFIRMATION,
                                        TaskName.REQUEST_FULFILLMENT]
    steps.request_fulfillment(session, order_id=order.id)  # the warehouse request got out
    for _ in range(sweeper.MAX_RESUMES):
        sweeper.resume_stuck(session, older_than=0)
    assert open_flags(session, order.id) == {"email_failed"}
    assert reload(session, order.id).status == "confirmed"  # paid: flagged, never failed
    assert sweeper.resume_stuck(session, older_than=0) == 0
