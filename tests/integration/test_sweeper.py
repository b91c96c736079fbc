"""The sweeper: stuck orders resent, bounded, and paid orders never out of sight."""


from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import update
from sqlalchemy.orm import Session

from shop.db import utcnow
from shop.orders.models import Order
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


def days_old(session: Session, order_id: uuid.UUID, days: int) -> None:
    session.execute(update(Order).where(Order.id == order_id)
                    .values(updated_at=utcnow() - dt.timedelta(days=days)))
    session.commit()


def test_a_paid_order_days_old_missing_its_email_and_request_is_still_re_driven_then_flagged(
        session: Session, gateway: FakeGateway) -> None:
    # Issue 18, finding 2: confirmed orders were re-driven only while under a day old.
    order = placed(session)
    to_reserved(session, order.id, gateway)
    steps.capture_payment(session, order_id=order.id, gateway=gateway, owner="a")
    days_old(session, order.id, 3)  # e.g. beat was down over a long weekend
    before = len(queued(session))
    assert sweeper.resume_stuck(session, older_than=300) == 1
    assert queued(session)[before:] == [TaskName.SEND_CONFIRMATION,
                                        TaskName.REQUEST_FULFILLMENT]
    for _ in range(sweeper.MAX_RESUMES):
        days_old(session, order.id, 3)
        sweeper.resume_stuck(session, older_than=300)
    assert reload(session, order.id).resumes == sweeper.MAX_RESUMES
    assert open_flags(session, order.id) == {"email_failed", "fulfillment_failed"}
    assert reload(session, order.id).status == "confirmed"
    days_old(session, order.id, 3)
    assert sweeper.resume_stuck(session, older_than=300) == 0
