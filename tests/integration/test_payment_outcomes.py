"""Unknown outcomes, refusals and releases at the payment provider, step by step
(SQLite and PostgreSQL, a recording fake gateway)."""

from __future__ import annotations

import datetime as dt
import sys
import uuid
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shop.messaging.models import OutboxMessage
from shop.orders import attention, giving_up, reconcile, service, steps, sweeper
from shop.orders.models import Attention, Order, Product
from shop.orders.workflow import TaskName
from shop.payments.gateway import IntentStatus, PaymentProviderError, PaymentTransientError
from shop.payments.models import Payment, PaymentStatus, Refund
from tests.factories.orders import OrderFactory, OrderLineFactory, ProductFactory
from tests.fakes import FakeGateway


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


def placed(session: Session, **overrides: Any) -> Order:
    mug = session.get(Product, "MUG-BLUE") or ProductFactory(sku="MUG-BLUE", on_hand=10)
    return OrderFactory(lines=[OrderLineFactory(product=mug, quantity=2)], placed=True,
                        **overrides)


def reload(session: Session, order_id: uuid.UUID) -> Order:
    session.expire_all()
    order = session.get(Order, order_id)
    assert order is not None
    return order


def payment_of(session: Session, order_id: uuid.UUID) -> Payment:
    session.expire_all()
    payment = session.scalar(select(Payment).where(Payment.order_id == order_id))
    assert payment is not None
    return payment


def reserved(session: Session) -> int:
    session.expire_all()
    return int(session.scalar(select(Product.reserved).where(Product.sku == "MUG-BLUE")) or 0)


def queued(session: Session) -> list[str]:
    return [m.name for m in session.scalars(
        select(OutboxMessage).order_by(OutboxMessage.created_at))]


def open_flags(session: Session, order_id: uuid.UUID) -> set[str]:
    session.expire_all()
    return {a.kind for a in attention.open_items(session, order_id=order_id)}


def to_reserved(session: Session, order_id: uuid.UUID, gateway: FakeGateway) -> None:
    steps.check_inventory(session, order_id=order_id)
    steps.charge_payment(session, order_id=order_id, gateway=gateway, owner="a")
    steps.reserve_stock(session, order_id=order_id)


def give_up(session: Session, task: TaskName, order_id: uuid.UUID, owner: str = "g") -> None:
    giving_up.give_up(session, task=task, order_id=order_id, error="provider kept failing",
                  owner=owner)


# --- 1. A capture whose answer is lost is not a failure ------------------------------

def test_a_lost_capture_answer_keeps_the_order_and_its_stock_until_the_provider_says(
        session: Session, gateway: FakeGateway) -> None:
    order = placed(session)
    to_reserved(session, order.id, gateway)
    gateway.fail_next = ["after_capture"]  # the provider captures; the answer is lost
    with pytest.raises(PaymentTransientError):
        steps.capture_payment(session, order_id=order.id, gateway=gateway, owner="a")
    gateway.fail_next = ["retrieve"] * 3  # ...and then keeps failing for every retry
    for _ in range(3):
        with pytest.raises(PaymentTransientError):
            steps.capture_payment(session, order_id=order.id, gateway=gateway, owner="a")
    give_up(session, TaskName.CAPTURE_PAYMENT, order.id)

    held = reload(session, order.id)
    assert (held.status, held.stage) == ("pending", "reserved")  # not failed, money taken
    assert reserved(session) == 2  # the stock is not sold again
    assert open_flags(session, order.id) == {"payment_unknown"}
    assert TaskName.RELEASE_PAYMENT not in queued(session)  # nothing voided or refunded

    tally = reconcile.reconcile(session, gateway=gateway, owner="reconcile")
    assert tally["capture_settled"] == 1
    done = reload(session, order.id)
    assert done.status == "confirmed"
    assert payment_of(session, order.id).status == PaymentStatus.CAPTURED
    assert gateway.count("capture") == 1
    assert open_flags(session, order.id) == set()
    assert queued(session)[-2:] == [TaskName.SEND_CONFIRMATION, TaskName.REQUEST_FULFILLMENT]
    assert reconcile.reconcile(session, gateway=gateway, owner="reconcile")["capture_settled"] == 0


def test_reconcile_keeps_asking_while_the_provider_is_down(
        session: Session, gateway: FakeGateway) -> None:
    order = placed(session)
    to_reserved(session, order.id, gateway)
    give_up(session, TaskName.CAPTURE_PAYMENT, order.id)
    gateway.fail_next = ["retrieve"]
    assert reconcile.reconcile(session, gateway=gateway, owner="r")["capture_unknown"] == 1
    assert (reload(session, order.id).stage, open_flags(session, order.id)) == (
        "reserved", {"payment_unknown"})


def test_an_authorization_that_was_never_captured_is_cancelled_and_the_order_failed(
        session: Session, gateway: FakeGateway) -> None:
    order = placed(session)
    to_reserved(session, order.id, gateway)
    give_up(session, TaskName.CAPTURE_PAYMENT, order.id)  # the capture never reached it
    reconcile.reconcile(session, gateway=gateway, owner="r")
    failed = reload(session, order.id)
    assert (failed.status, failed.failure_step, failed.failure_reason) == (
        "failed", "payment", "payment_unavailable")
    assert reserved(session) == 0
    steps.release_payment(session, order_id=order.id, attempt=1, gateway=gateway, owner="r")
    assert gateway.intents[str(payment_of(session, order.id).reference)].status == "canceled"
    assert gateway.count("capture") == 0


def test_giving_up_on_a_capture_waits_for_a_call_still_in_flight(
        session: Session, gateway: FakeGateway) -> None:
    order = placed(session)
    to_reserved(session, order.id, gateway)
    steps.claim_lease(session, order_id=order.id, owner="capture-in-flight")
    with pytest.raises(steps.OrderBusy):
        give_up(session, TaskName.CAPTURE_PAYMENT, order.id)
    assert open_flags(session, order.id) == set()
    charging = placed(session)
    steps.check_inventory(session, order_id=charging.id)
    steps.claim_lease(session, order_id=charging.id, owner="charge-in-flight")
    with pytest.raises(steps.OrderBusy):
        give_up(session, TaskName.CHARGE_PAYMENT, charging.id)
    assert reload(session, charging.id).status == "pending"


def test_a_captured_order_that_was_cancelled_meanwhile_is_refunded_not_confirmed(
        session: Session, gateway: FakeGateway) -> None:
    order = placed(session)
    to_reserved(session, order.id, gateway)
    gateway.fail_next = ["after_capture"]  # captured at the provider, answer lost...
    with pytest.raises(PaymentTransientError):
        steps.capture_payment(session, order_id=order.id, gateway=gateway, owner="a")
    steps.fail_step(session, order_id=order.id, step=steps.Step.PAYMENT, reason="timeout",
                    message="stand-in for an admin cancel")  # ...and the order stopped
    assert reserved(session) == 0
    steps.release_payment(session, order_id=order.id, attempt=1, gateway=gateway, owner="r")
    payment = payment_of(session, order.id)
    assert (payment.status, payment.amount_captured, payment.amount_refunded) == (
        PaymentStatus.REFUNDED, order.total, order.total)
    assert session.scalar(select(Refund.amount).where(Refund.payment_id == payment.id)) == \
        order.total
    assert gateway.count("refund") == 1
    steps.release_payment(session, order_id=order.id, attempt=1, gateway=gateway, owner="r")
    assert gateway.count("refund") == 1


# --- 2. A void that cannot finish stays visible and is retried -------------------------

def test_a_void_that_runs_out_of_attempts_is_flagged_and_reconcile_finishes_it(
        session: Session, gateway: FakeGateway) -> None:
    order = placed(session)
    to_reserved(session, order.id, gateway)
    steps.fail_step(session, order_id=order.id, step=steps.Step.PAYMENT,
                    reason="payment_unavailable", message="provider down")
    gateway.fail_next = ["cancel"]
    with pytest.raises(PaymentTransientError):
        steps.release_payment(session, order_id=order.id, attempt=1, gateway=gateway,
                              owner="r")
    give_up(session, TaskName.RELEASE_PAYMENT, order.id)
    assert open_flags(session, order.id) == {"release_failed"}
    assert payment_of(session, order.id).status == PaymentStatus.AUTHORIZED

    assert reconcile.reconcile(session, gateway=gateway, owner="r")["released"] == 1
    assert payment_of(session, order.id).status == PaymentStatus.VOIDED
    assert open_flags(session, order.id) == set()
    assert reconcile.reconcile(session, gateway=gateway, owner="r")["released"] == 0


def test_a_processing_intent_is_not_marked_voided(session: Session,
                                                  gateway: FakeGateway) -> None:
    order = placed(session)
    to_reserved(session, order.id, gateway)
    steps.fail_step(session, order_id=order.id, step=steps.Step.PAYMENT, reason="timeout",
                    message="x")
    reference = str(payment_of(session, order.id).reference)
    gateway.intents[reference] = replace(gateway.intents[reference],
                                         status=IntentStatus.PROCESSING)
    with pytest.raises(PaymentTransientError):
        steps.release_payment(session, order_id=order.id, attempt=1, gateway=gateway,
                              owner="r")
    assert payment_of(session, order.id).status == PaymentStatus.AUTHORIZED
    assert reconcile.reconcile(session, gateway=gateway, owner="r")["release_pending"] == 1


# --- 3. A refusal is a terminal failure, a refused key an alarm --------------------------

def test_a_provider_refusal_fails_the_order_with_a_customer_safe_message(
        session: Session, gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    order = placed(session)
    steps.check_inventory(session, order_id=order.id)

    def refuse(**_: Any) -> Any:
        raise PaymentProviderError("No such PaymentMethod: 'pm_nope'; request req_123 at db-7")

    monkeypatch.setattr(gateway, "create_intent", refuse)
    steps.charge_payment(session, order_id=order.id, gateway=gateway, owner="a")
    failed = reload(session, order.id)
    assert (failed.status, failed.failure_step, failed.failure_reason) == (
        "failed", "payment", "payment_rejected")
    view = service.order_view(session, order=failed).model_dump()
    assert "req_123" not in str(view)
    assert "db-7" not in str(view)
    assert view["failure"]["message"] == \
        "The payment provider could not accept this payment."
    assert "pm_nope" in (failed.failure_detail or "")  # kept for admins and logs
    assert queued(session)[-1] == TaskName.CHARGE_PAYMENT  # nothing to release, no loop


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


# --- 5. Emails and warehouse requests are re-driven, then flagged -------------------------

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


# --- 11. A redelivery after a decline keeps the card's reason ----------------------------

def test_a_redelivered_charge_after_a_decline_keeps_the_decline_reason(
        session: Session, gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway.decline.add("pm_card_chargeDeclinedInsufficientFunds")
    order = placed(session, payment_method="pm_card_chargeDeclinedInsufficientFunds")
    steps.check_inventory(session, order_id=order.id)
    real_record = steps.payments.record

    def crash(*_: Any, **__: Any) -> Any:  # the worker dies after the cancel, before commit
        raise SystemExit("worker killed")

    monkeypatch.setattr(steps.payments, "record", crash)
    with pytest.raises(SystemExit):
        steps.charge_payment(session, order_id=order.id, gateway=gateway, owner="first")
    assert gateway.count("cancel") == 1
    monkeypatch.setattr(steps.payments, "record", real_record)
    session.execute(update(Order).where(Order.id == order.id)
                    .values(lease_owner=None, lease_until=None))
    session.commit()
    steps.charge_payment(session, order_id=order.id, gateway=gateway, owner="again")
    failed = reload(session, order.id)
    assert (failed.status, failed.failure_reason) == ("failed", "card_declined")


# --- 12. Leases and claims use the database's clock --------------------------------------

def test_a_worker_whose_clock_runs_ahead_cannot_take_a_live_lease(
        session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    order = placed(session)
    steps.claim_lease(session, order_id=order.id, owner="first")
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    for module in [m for name, m in sys.modules.items() if name.startswith("shop")]:
        if hasattr(module, "utcnow"):  # this worker's own clock runs an hour fast
            monkeypatch.setattr(module, "utcnow", lambda: ahead)
    with pytest.raises(steps.OrderBusy):
        steps.claim_lease(session, order_id=order.id, owner="skewed")


def test_attention_flags_are_one_row_per_kind(session: Session) -> None:
    order = placed(session)
    for message in ("first", "second"):
        attention.flag(session, order_id=order.id, kind=attention.Kind.EMAIL_FAILED,
                       message=message)
        session.commit()
    rows = session.scalars(select(Attention).where(Attention.order_id == order.id)).all()
    assert [(r.kind, r.message) for r in rows] == [("email_failed", "second")]


def test_a_delayed_message_waits_on_the_database_clock_not_the_relays(
        session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    from shop.messaging.service import enqueue_task, relay_batch

    enqueue_task(session, name="shop.test.later", kwargs={}, delay=60)
    session.commit()
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    for module in [m for name, m in sys.modules.items() if name.startswith("shop")]:
        if hasattr(module, "utcnow"):
            monkeypatch.setattr(module, "utcnow", lambda: ahead)
    sent: list[str] = []
    assert relay_batch(session, publish=lambda m: sent.append(m.name), limit=10) == 0
    assert sent == []
