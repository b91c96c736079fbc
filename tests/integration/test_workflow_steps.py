"""Each workflow step against a real database, run twice, and after crashes."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shop.db import session_scope
from shop.messaging.models import OutboxMessage
from shop.orders import flow as workflow
from shop.orders import lease, service
from shop.orders.admin import service as admin
from shop.orders.models import FulfillmentRequest, Order, Product
from shop.orders.provider import converge, reconcile
from shop.orders.workflow import steps, sweeper
from shop.orders.workflow.table import TaskName
from shop.payments import service as payments
from shop.payments.gateway import IntentStatus, PaymentProviderError, PaymentTransientError
from shop.payments.models import Payment, PaymentStatus, Refund
from tests.factories.orders import OrderFactory, OrderLineFactory, ProductFactory
from tests.fakes import FakeGateway
from tests.fixtures.outcomes import (
    payment_of,
    placed,
    reserved,
    to_reserved,
)


def placed_order(product: Product, **overrides: Any) -> Order:
    """Two of ``product``, placed as checkout places it: its first step is in the outbox."""
    return OrderFactory(lines=[OrderLineFactory(product=product, quantity=2)], placed=True,
                        **overrides)


def queued(session: Session) -> list[str]:
    return [m.name for m in session.scalars(
        select(OutboxMessage).order_by(OutboxMessage.created_at))]


def reload(session: Session, order_id: uuid.UUID) -> Order:
    session.expire_all()
    order = session.get(Order, order_id)
    assert order is not None
    return order


def run_to_confirmed(session: Session, order_id: uuid.UUID, gateway: FakeGateway) -> None:
    steps.check_inventory(session, order_id=order_id)
    steps.charge_payment(session, order_id=order_id, gateway=gateway, owner="a")
    steps.reserve_stock(session, order_id=order_id)
    steps.capture_payment(session, order_id=order_id, gateway=gateway, owner="a")


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


def test_each_step_enqueues_exactly_the_next_one_in_its_commit(
        session: Session, gateway: FakeGateway) -> None:
    mug = ProductFactory(sku="MUG-BLUE", on_hand=10)
    order = placed_order(mug)
    run_to_confirmed(session, order.id, gateway)
    assert queued(session) == [
        "shop.orders.check_inventory", "shop.orders.charge_payment",
        "shop.orders.reserve_stock", "shop.orders.capture_payment",
        "shop.orders.send_confirmation", "shop.orders.request_fulfillment"]
    assert reload(session, order.id).status == "confirmed"


def test_every_step_run_twice_has_the_effect_of_once(
        session: Session, gateway: FakeGateway) -> None:
    mug = ProductFactory(sku="MUG-BLUE", on_hand=10)
    order = placed_order(mug)
    run_to_confirmed(session, order.id, gateway)
    run_to_confirmed(session, order.id, gateway)
    steps.request_fulfillment(session, order_id=order.id)
    steps.request_fulfillment(session, order_id=order.id)
    assert (gateway.count("create"), gateway.count("confirm"), gateway.count("capture")) == (
        1, 1, 1)
    assert session.get(Product, "MUG-BLUE").reserved == 2  # type: ignore[union-attr]
    assert len(session.scalars(select(FulfillmentRequest)).all()) == 1
    assert len(queued(session)) == 7  # six steps and one fulfillment event


def test_a_rerun_after_a_lost_create_answer_gets_the_same_intent_by_its_key(
        session: Session, gateway: FakeGateway) -> None:
    """One call creates and confirms the intent (issue 19). Its answer lost, nothing is
    stored; the rerun sends the same request with the same key, and the provider
    replays its first answer: one intent, authorized once, no retrieve."""
    mug = ProductFactory(sku="MUG-BLUE", on_hand=10)
    order = placed_order(mug)
    steps.check_inventory(session, order_id=order.id)
    gateway.fail_next = ["after_create"]  # authorized at the provider, answer lost
    with pytest.raises(PaymentTransientError):
        steps.charge_payment(session, order_id=order.id, gateway=gateway, owner="first")
    payment = session.scalar(select(Payment))
    assert payment is not None
    assert (payment.reference, payment.idempotency_key) == (None, f"{order.id}:1")
    steps.charge_payment(session, order_id=order.id, gateway=gateway, owner="retry")
    assert (gateway.count("create"), gateway.count("confirm")) == (1, 1)
    assert [op for op, _ in gateway.requests] == ["create", "create"]  # the second, replayed
    assert reload(session, order.id).stage == "authorized"


def test_a_rerun_after_a_crash_between_create_and_confirm_reuses_the_stored_intent(
        session: Session, gateway: FakeGateway) -> None:
    """An intent stored unconfirmed (made by 0.1, which created and confirmed in two
    calls) is confirmed on the rerun, never created again."""
    mug = ProductFactory(sku="MUG-BLUE", on_hand=10)
    order = placed_order(mug)
    steps.check_inventory(session, order_id=order.id)
    created = gateway.create_intent(amount=order.total, currency=order.currency,
                                    payment_method=order.payment_method, metadata={},
                                    idempotency_key=f"{order.id}:1:create")
    payments.open_attempt(session, order_id=order.id, attempt=1, amount=order.total,
                          currency=order.currency, provider=gateway.name)
    session.execute(update(Payment).values(reference=created.reference, status="pending"))
    session.commit()
    steps.charge_payment(session, order_id=order.id, gateway=gateway, owner="retry")
    assert gateway.count("create") == 1
    assert reload(session, order.id).stage == "authorized"


def test_a_rerun_after_a_lost_confirm_answer_asks_the_provider_instead_of_charging(
        session: Session, gateway: FakeGateway) -> None:
    mug = ProductFactory(sku="MUG-BLUE", on_hand=10)
    order = placed_order(mug)
    steps.check_inventory(session, order_id=order.id)
    gateway.fail_next = ["after_confirm"]  # authorized at the provider, answer lost
    with pytest.raises(PaymentTransientError):
        steps.charge_payment(session, order_id=order.id, gateway=gateway, owner="first")
    steps.charge_payment(session, order_id=order.id, gateway=gateway, owner="retry")
    assert (gateway.count("create"), gateway.count("confirm")) == (1, 1)
    assert reload(session, order.id).stage == "authorized"


def test_a_concurrent_copy_is_kept_out_by_the_lease(session: Session,
                                                    gateway: FakeGateway) -> None:
    mug = ProductFactory(sku="MUG-BLUE", on_hand=10)
    order = placed_order(mug)
    steps.check_inventory(session, order_id=order.id)
    steps.lease.claim(session, order_id=order.id, owner="copy-1")
    with pytest.raises(lease.OrderBusy):
        steps.charge_payment(session, order_id=order.id, gateway=gateway, owner="copy-2")
    assert gateway.calls == []


def test_a_decline_fails_the_order_without_touching_stock(session: Session,
                                                          gateway: FakeGateway) -> None:
    mug = ProductFactory(sku="MUG-BLUE", on_hand=10)
    gateway.decline.add("pm_card_chargeDeclined")
    order = placed_order(mug, payment_method="pm_card_chargeDeclined")
    steps.check_inventory(session, order_id=order.id)
    steps.charge_payment(session, order_id=order.id, gateway=gateway, owner="a")
    failed = reload(session, order.id)
    assert (failed.status, failed.failure_step, failed.failure_reason) == (
        "failed", "payment", "card_declined")
    assert session.get(Product, "MUG-BLUE").reserved == 0  # type: ignore[union-attr]
    assert queued(session)[-1] == "shop.orders.charge_payment"


def test_stock_gone_at_reservation_fails_the_order_and_voids_the_authorization(
        session: Session, gateway: FakeGateway) -> None:
    mug = ProductFactory(sku="MUG-BLUE", on_hand=2)
    first = placed_order(mug)
    second = placed_order(mug)
    for order_id in (first.id, second.id):
        steps.check_inventory(session, order_id=order_id)
        steps.charge_payment(session, order_id=order_id, gateway=gateway, owner="a")
    steps.reserve_stock(session, order_id=first.id)
    steps.reserve_stock(session, order_id=second.id)
    lost = reload(session, second.id)
    assert (lost.status, lost.failure_step, lost.failure_reason) == (
        "failed", "reservation", "out_of_stock")
    assert queued(session)[-1] == "shop.payments.void_payment"
    assert converge.release(session, order_id=second.id, attempt=1, gateway=gateway,
                                 owner="release")
    voided = session.scalar(select(Payment).where(Payment.order_id == second.id))
    assert voided is not None
    assert gateway.intents[str(voided.reference)].status == "canceled"
    assert session.get(Product, "MUG-BLUE").reserved == 2  # type: ignore[union-attr]


def test_out_of_stock_at_inventory_never_reaches_the_provider(
        session: Session, gateway: FakeGateway) -> None:
    mug = ProductFactory(sku="MUG-BLUE", on_hand=1)
    order = placed_order(mug)
    steps.check_inventory(session, order_id=order.id)
    assert reload(session, order.id).failure_reason == "out_of_stock"
    assert queued(session) == ["shop.orders.check_inventory"]


def test_giving_up_on_a_reserved_order_releases_stock_and_voids(
        session: Session, gateway: FakeGateway) -> None:
    mug = ProductFactory(sku="MUG-BLUE", on_hand=10)
    order = placed_order(mug)
    steps.check_inventory(session, order_id=order.id)
    steps.charge_payment(session, order_id=order.id, gateway=gateway, owner="a")
    steps.reserve_stock(session, order_id=order.id)
    assert steps.fail_step(session, order_id=order.id, step=workflow.Step.PAYMENT,
                           reason="payment_unavailable", message="provider down")
    failed = reload(session, order.id)
    assert (failed.status, failed.failure_reason) == ("failed", "payment_unavailable")
    assert session.get(Product, "MUG-BLUE").reserved == 0  # type: ignore[union-attr]
    assert queued(session)[-1] == "shop.payments.void_payment"
    assert not steps.fail_step(session, order_id=order.id, step=workflow.Step.PAYMENT,
                               reason="payment_unavailable", message="again")


def test_stuck_orders_get_their_next_step_sent_again(session: Session) -> None:
    mug = ProductFactory(sku="MUG-BLUE", on_hand=10)
    order = placed_order(mug)
    assert sweeper.resume_stuck(session, older_than=3600) == 0
    assert sweeper.resume_stuck(session, older_than=0) == 1
    assert queued(session) == ["shop.orders.check_inventory"] * 2
    assert reload(session, order.id).events[-1].type == "workflow.resumed"


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
    converge.release(session, order_id=order.id, attempt=1, gateway=gateway, owner="r")
    payment = payment_of(session, order.id)
    assert (payment.status, payment.amount_captured, payment.amount_refunded) == (
        PaymentStatus.REFUNDED, order.total, order.total)
    assert session.scalar(select(Refund.amount).where(Refund.payment_id == payment.id)) == \
        order.total
    assert gateway.count("refund") == 1
    converge.release(session, order_id=order.id, attempt=1, gateway=gateway, owner="r")
    assert gateway.count("refund") == 1


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
        converge.release(session, order_id=order.id, attempt=1, gateway=gateway,
                              owner="r")
    assert payment_of(session, order.id).status == PaymentStatus.AUTHORIZED
    assert reconcile.reconcile(session, gateway=gateway, owner="r")["release_pending"] == 1


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



# Issue 18, finding 10: a retried order whose money was already captured was failed as
# "Your card was declined", and the money refunded.

def failed_after_its_capture(session: Session, order: Order, gateway: FakeGateway) -> str:
    """The capture reached the provider but the order was failed anyway (the answer was
    lost and the step gave up), and its release has not run. Returns the reference."""
    steps.check_inventory(session, order_id=order.id)
    steps.charge_payment(session, order_id=order.id, gateway=gateway, owner="a")
    steps.reserve_stock(session, order_id=order.id)
    reference = str(payment_of(session, order.id).reference)
    gateway.capture(reference, amount=order.total, idempotency_key="capture")
    steps.fail_step(session, order_id=order.id, step=steps.Step.PAYMENT,
                    reason="payment_unavailable", message="the capture step gave up")
    return reference


def retried(order_id: uuid.UUID) -> None:
    """An admin's retry, in its own session as an API request has."""
    with session_scope() as session:
        admin.retry(session, order_id=order_id, actor="ada")


def test_a_retried_order_whose_payment_was_captured_is_confirmed_with_that_payment(
        session: Session, gateway: FakeGateway) -> None:
    order = placed_order(ProductFactory(sku="MUG-BLUE", on_hand=10))
    reference = failed_after_its_capture(session, order, gateway)
    retried(order.id)
    run_to_confirmed(session, order.id, gateway)
    confirmed = reload(session, order.id)
    assert (confirmed.status, confirmed.failure_reason) == ("confirmed", None)
    assert not converge.release(session, order_id=order.id, attempt=1, gateway=gateway,
                                owner="release")  # the failure's release, late
    paid = payment_of(session, order.id)
    assert (paid.attempt, paid.status, paid.amount_captured) == (
        1, PaymentStatus.CAPTURED, order.total)
    assert gateway.intents[reference].amount_refunded == 0
    assert (gateway.count("capture"), gateway.count("refund")) == (1, 0)


def test_a_retried_captured_order_whose_stock_is_gone_says_the_payment_is_refunded(
        session: Session, gateway: FakeGateway) -> None:
    mug = ProductFactory(sku="MUG-BLUE", on_hand=2)
    order = placed_order(mug)
    reference = failed_after_its_capture(session, order, gateway)
    run_to_confirmed(session, placed_order(mug).id, gateway)  # the units sold meanwhile
    retried(order.id)
    steps.charge_payment(session, order_id=order.id, gateway=gateway, owner="a")
    steps.reserve_stock(session, order_id=order.id)
    failed = reload(session, order.id)
    assert (failed.status, failed.failure_step, failed.failure_reason) == (
        "failed", "reservation", "out_of_stock_refunded")
    assert "refunded" in str(failed.failure_message)
    assert converge.release(session, order_id=order.id, attempt=1, gateway=gateway,
                            owner="release")
    assert gateway.intents[reference].amount_refunded == order.total
