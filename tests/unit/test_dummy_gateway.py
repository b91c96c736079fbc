"""The dummy payment provider: Stripe's test cards, status moves and idempotency, on files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shop.payments.dummy import DummyGateway, intent_reference
from shop.payments.gateway import (
    IdempotencyMismatch,
    IntentState,
    PaymentDeclined,
    PaymentGateway,
    PaymentProviderError,
)

METADATA = {"order_id": "6f1c2e1a-0000-4000-8000-000000000001", "attempt": "1"}


@pytest.fixture
def gateway(tmp_path: Path) -> DummyGateway:
    return DummyGateway(state_dir=tmp_path / "payments")


def create(gateway: DummyGateway, payment_method: str = "pm_card_visa", *, key: str = "o1:1:create",
           amount: int = 3000) -> IntentState:
    return gateway.create_intent(amount=amount, currency="USD", payment_method=payment_method,
                                 metadata=METADATA, idempotency_key=key)


def authorized(gateway: DummyGateway, payment_method: str = "pm_card_visa") -> IntentState:
    intent = create(gateway, payment_method)
    return gateway.confirm(intent.reference, idempotency_key="o1:1:confirm")


def test_dummy_gateway_satisfies_the_gateway_protocol(gateway: DummyGateway) -> None:
    as_protocol: PaymentGateway = gateway

    assert as_protocol.name == "dummy"


def test_create_returns_an_unconfirmed_intent_named_after_the_key(gateway: DummyGateway) -> None:
    intent = create(gateway)

    assert intent.reference == intent_reference("o1:1:create")
    assert intent.reference.startswith("pi_dummy_")
    assert intent.status == "requires_confirmation"
    assert intent.amount == 3000
    assert intent.amount_received == 0
    assert intent.client_secret is not None
    assert intent.client_secret.startswith(f"{intent.reference}_secret_")


def test_create_with_the_same_key_returns_the_same_intent(gateway: DummyGateway) -> None:
    first = create(gateway)

    again = create(gateway)

    assert again == first
    assert len(list(gateway._store.root.glob("*.json"))) == 1


def test_create_replays_the_original_reply_even_after_the_intent_moved_on(
    gateway: DummyGateway,
) -> None:
    first = create(gateway)
    gateway.confirm(first.reference, idempotency_key="o1:1:confirm")

    assert create(gateway).status == "requires_confirmation"
    assert gateway.retrieve(first.reference).status == "requires_capture"


def test_create_with_a_reused_key_and_other_parameters_is_refused(gateway: DummyGateway) -> None:
    create(gateway, amount=3000)

    with pytest.raises(PaymentProviderError, match="same parameters"):
        create(gateway, amount=4000)


def test_different_keys_create_different_intents(gateway: DummyGateway) -> None:
    assert create(gateway, key="a").reference != create(gateway, key="b").reference


def test_intent_is_stored_as_json_with_currency_and_metadata(gateway: DummyGateway) -> None:
    intent = create(gateway)

    stored = json.loads((gateway._store.root / f"{intent.reference}.json").read_text())

    assert stored["currency"] == "usd"
    assert stored["metadata"] == METADATA
    assert stored["payment_method"] == "pm_card_visa"


@pytest.mark.parametrize("payment_method", ["pm_card_visa", "pm_card_mastercard", "pm_1Nxyz"])
def test_confirm_authorizes_cards_that_succeed(gateway: DummyGateway, payment_method: str) -> None:
    state = authorized(gateway, payment_method)

    assert state.status == "requires_capture"
    assert state.decline_code is None


@pytest.mark.parametrize(
    ("payment_method", "reason"),
    [
        ("pm_card_chargeDeclined", "card_declined"),
        ("pm_card_chargeCustomerFail", "card_declined"),
        ("pm_card_visa_chargeDeclined", "card_declined"),
        ("pm_card_chargeDeclinedFraudulent", "card_declined"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
    ],
)
def test_confirm_declines_stripes_declining_test_cards(
    gateway: DummyGateway, payment_method: str, reason: str,
) -> None:
    intent = create(gateway, payment_method)

    with pytest.raises(PaymentDeclined) as declined:
        gateway.confirm(intent.reference, idempotency_key="o1:1:confirm")

    assert declined.value.reason == reason
    assert declined.value.message
    after = gateway.retrieve(intent.reference)
    assert after.status == "requires_payment_method"
    assert after.decline_code == reason
    assert after.decline_message == declined.value.message


def test_a_declined_confirm_replays_the_decline_for_the_same_key(gateway: DummyGateway) -> None:
    intent = create(gateway, "pm_card_chargeDeclinedInsufficientFunds")
    with pytest.raises(PaymentDeclined):
        gateway.confirm(intent.reference, idempotency_key="o1:1:confirm")

    with pytest.raises(PaymentDeclined) as again:
        gateway.confirm(intent.reference, idempotency_key="o1:1:confirm")

    assert again.value.reason == "insufficient_funds"


def test_confirm_again_with_the_same_key_returns_the_same_state(gateway: DummyGateway) -> None:
    first = authorized(gateway)

    again = gateway.confirm(first.reference, idempotency_key="o1:1:confirm")

    assert again == first


def test_confirm_again_with_a_new_key_is_refused(gateway: DummyGateway) -> None:
    intent = authorized(gateway)

    with pytest.raises(PaymentProviderError, match="requires_capture"):
        gateway.confirm(intent.reference, idempotency_key="o1:1:confirm-again")


def test_unknown_payment_method_ids_are_refused(gateway: DummyGateway) -> None:
    with pytest.raises(PaymentProviderError, match="No such PaymentMethod"):
        create(gateway, "tok_visa")


def test_authentication_required_card_needs_customer_action(gateway: DummyGateway) -> None:
    state = authorized(gateway, "pm_card_authenticationRequired")

    assert state.status == "requires_action"
    assert state.client_secret is not None


def test_passed_authentication_authorizes_the_intent(gateway: DummyGateway) -> None:
    intent = authorized(gateway, "pm_card_authenticationRequired")

    state = gateway.complete_authentication(intent.reference, success=True)

    assert state.status == "requires_capture"
    assert gateway.retrieve(intent.reference).status == "requires_capture"


def test_failed_authentication_declines_with_authentication_failed(gateway: DummyGateway) -> None:
    intent = authorized(gateway, "pm_card_authenticationRequired")

    state = gateway.complete_authentication(intent.reference, success=False)

    assert state.status == "requires_payment_method"
    assert state.decline_code == "authentication_failed"


def test_authentication_on_an_intent_that_needs_none_is_refused(gateway: DummyGateway) -> None:
    intent = authorized(gateway)

    with pytest.raises(PaymentProviderError):
        gateway.complete_authentication(intent.reference, success=True)


def test_capture_takes_the_amount_and_succeeds(gateway: DummyGateway) -> None:
    intent = authorized(gateway)

    state = gateway.capture(intent.reference, amount=2500, idempotency_key="o1:1:capture")

    assert state.status == "succeeded"
    assert state.amount_received == 2500
    assert gateway.retrieve(intent.reference).amount_received == 2500


def test_capture_with_the_same_key_twice_captures_once(gateway: DummyGateway) -> None:
    intent = authorized(gateway)
    first = gateway.capture(intent.reference, amount=3000, idempotency_key="o1:1:capture")

    again = gateway.capture(intent.reference, amount=3000, idempotency_key="o1:1:capture")

    assert again == first


def test_capture_more_than_authorized_is_refused(gateway: DummyGateway) -> None:
    intent = authorized(gateway)

    with pytest.raises(PaymentProviderError, match="between 1 and"):
        gateway.capture(intent.reference, amount=3001, idempotency_key="o1:1:capture")
    assert gateway.retrieve(intent.reference).status == "requires_capture"


def test_capture_before_confirmation_is_refused(gateway: DummyGateway) -> None:
    intent = create(gateway)

    with pytest.raises(PaymentProviderError, match="requires_confirmation"):
        gateway.capture(intent.reference, amount=3000, idempotency_key="o1:1:capture")


def test_a_refused_write_is_replayed_for_its_key_as_stripe_does(gateway: DummyGateway) -> None:
    """Stripe keeps the answer of a request that started executing, a refusal included
    (issue 19: the dummy honours keys faithfully); a new attempt needs a new key."""
    intent = create(gateway)
    with pytest.raises(PaymentProviderError) as first:
        gateway.capture(intent.reference, amount=3000, idempotency_key="o1:1:capture")
    gateway.confirm(intent.reference, idempotency_key="o1:1:confirm")

    with pytest.raises(PaymentProviderError) as again:
        gateway.capture(intent.reference, amount=3000, idempotency_key="o1:1:capture")
    state = gateway.capture(intent.reference, amount=3000, idempotency_key="o1:1:capture-2")

    assert str(again.value) == str(first.value)
    assert state.status == "succeeded"


@pytest.mark.parametrize("payment_method", ["pm_card_visa", "pm_card_authenticationRequired"])
def test_cancel_releases_an_uncaptured_intent(gateway: DummyGateway, payment_method: str) -> None:
    intent = authorized(gateway, payment_method)

    state = gateway.cancel(intent.reference, idempotency_key="o1:1:cancel")

    assert state.status == "canceled"
    assert state.amount_received == 0


def test_cancel_of_a_declined_intent_keeps_the_decline(gateway: DummyGateway) -> None:
    intent = create(gateway, "pm_card_chargeDeclined")
    with pytest.raises(PaymentDeclined):
        gateway.confirm(intent.reference, idempotency_key="o1:1:confirm")

    state = gateway.cancel(intent.reference, idempotency_key="o1:1:cancel")

    assert state.status == "canceled"
    assert state.decline_code == "card_declined"


def test_capture_of_a_canceled_intent_is_refused(gateway: DummyGateway) -> None:
    intent = authorized(gateway)
    gateway.cancel(intent.reference, idempotency_key="o1:1:cancel")

    with pytest.raises(PaymentProviderError, match="canceled"):
        gateway.capture(intent.reference, amount=3000, idempotency_key="o1:1:capture")


def test_cancel_of_a_captured_intent_is_refused(gateway: DummyGateway) -> None:
    intent = authorized(gateway)
    gateway.capture(intent.reference, amount=3000, idempotency_key="o1:1:capture")

    with pytest.raises(PaymentProviderError, match="succeeded"):
        gateway.cancel(intent.reference, idempotency_key="o1:1:cancel")


def test_a_key_reused_for_another_operation_is_refused(gateway: DummyGateway) -> None:
    intent = authorized(gateway)

    with pytest.raises(PaymentProviderError, match="same parameters"):
        gateway.capture(intent.reference, amount=3000, idempotency_key="o1:1:confirm")


@pytest.mark.parametrize("reference", ["pi_dummy_000000000000000000000000", "../../etc/passwd"])
def test_unknown_intents_are_refused(gateway: DummyGateway, reference: str) -> None:
    with pytest.raises(PaymentProviderError, match="No such payment_intent"):
        gateway.retrieve(reference)


def test_state_is_shared_by_gateways_on_the_same_directory(tmp_path: Path) -> None:
    api = DummyGateway(state_dir=tmp_path)
    worker = DummyGateway(state_dir=tmp_path)
    intent = create(api)

    worker.confirm(intent.reference, idempotency_key="o1:1:confirm")

    assert api.retrieve(intent.reference).status == "requires_capture"


def test_state_is_shared_across_processes(tmp_path: Path) -> None:
    gateway = DummyGateway(state_dir=tmp_path)
    intent = create(gateway)
    script = (
        "import sys; from pathlib import Path; from shop.payments.dummy import DummyGateway\n"
        "g = DummyGateway(state_dir=Path(sys.argv[1]))\n"
        "print(g.confirm(sys.argv[2], idempotency_key='o1:1:confirm').status)\n"
    )

    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), intent.reference],
                          capture_output=True, text=True, check=True, timeout=60)

    assert done.stdout.strip() == "requires_capture"
    assert gateway.retrieve(intent.reference).status == "requires_capture"


def test_concurrent_creates_with_one_key_make_one_intent(tmp_path: Path) -> None:
    gateways = [DummyGateway(state_dir=tmp_path) for _ in range(8)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        states = list(pool.map(create, gateways))

    assert len({state.reference for state in states}) == 1
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_concurrent_captures_with_one_key_capture_once(tmp_path: Path) -> None:
    intent = authorized(DummyGateway(state_dir=tmp_path))
    gateways = [DummyGateway(state_dir=tmp_path) for _ in range(8)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        states = list(pool.map(
            lambda g: g.capture(intent.reference, amount=1000, idempotency_key="o1:1:capture"),
            gateways))

    assert {state.amount_received for state in states} == {1000}
    assert not list(tmp_path.glob("*.tmp"))


def test_latency_is_spent_on_each_call(tmp_path: Path) -> None:
    gateway = DummyGateway(state_dir=tmp_path, latency_ms=50)
    started = time.monotonic()

    intent = create(gateway)
    gateway.retrieve(intent.reference)

    assert time.monotonic() - started >= 0.1


# --- issue 19: create-and-confirm in one call, and Stripe's idempotency, faithfully -------


def test_a_confirming_create_authorizes_in_one_call(gateway: DummyGateway) -> None:
    state = gateway.create_intent(amount=3000, currency="usd", payment_method="pm_card_visa",
                                  metadata={"order_id": "o1"}, idempotency_key="o1:1:authorize",
                                  confirm=True)
    assert (state.status, state.replayed) == ("requires_capture", False)


def test_the_same_key_and_parameters_replay_the_answer_marked_as_a_replay(
        gateway: DummyGateway) -> None:
    first = gateway.create_intent(amount=3000, currency="usd", payment_method="pm_card_visa",
                                  metadata={}, idempotency_key="k", confirm=True)
    gateway.capture(first.reference, amount=3000, idempotency_key="cap")
    again = gateway.create_intent(amount=3000, currency="usd", payment_method="pm_card_visa",
                                  metadata={}, idempotency_key="k", confirm=True)
    captured_again = gateway.capture(first.reference, amount=3000, idempotency_key="cap")
    assert again == first  # the stored answer, not the intent as it is now
    assert (again.status, again.replayed) == ("requires_capture", True)
    assert (captured_again.status, captured_again.replayed) == ("succeeded", True)


def test_a_decline_is_replayed_with_its_intent(gateway: DummyGateway) -> None:
    def declined() -> PaymentDeclined:
        with pytest.raises(PaymentDeclined) as caught:
            gateway.create_intent(amount=3000, currency="usd",
                                  payment_method="pm_card_chargeDeclined", metadata={},
                                  idempotency_key="k", confirm=True)
        return caught.value

    first, again = declined(), declined()
    assert first.reference is not None
    assert (again.reason, again.reference) == (first.reason, first.reference)
    assert gateway.retrieve(first.reference).status == "requires_payment_method"


@pytest.mark.parametrize("other", [{"amount": 3001}, {"confirm": False},
                                   {"payment_method": "pm_card_mastercard"}])
def test_the_same_key_with_other_parameters_is_an_idempotency_error(
        gateway: DummyGateway, other: dict[str, object]) -> None:
    request: dict[str, Any] = {"amount": 3000, "currency": "usd",
                               "payment_method": "pm_card_visa", "metadata": {},
                               "idempotency_key": "k", "confirm": True}
    gateway.create_intent(**request)
    with pytest.raises(IdempotencyMismatch, match="idempotency_error"):
        gateway.create_intent(**{**request, **other})
