"""The Stripe gateway against localstripe, a recording fake for the wire, and error mapping."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import stripe

from shop.config import Settings
from shop.payments.dummy import DummyGateway
from shop.payments.gateway import (
    IdempotencyMismatch,
    IntentState,
    PaymentAuthError,
    PaymentDeclined,
    PaymentGateway,
    PaymentProviderError,
    PaymentRateLimited,
    PaymentTransientError,
    StripeGateway,
    translate_error,
)
from shop.payments.providers import build_gateway
from tests.fixtures.localstripe import (
    DECLINING_PAYMENT_METHOD,
    THREE_DS_CARD,
    THREE_DS_THEN_DECLINED_CARD,
    authenticate,
    create_card_payment_method,
    fetch_intents,
    intents_for_order,
)


def new_intent(gateway: StripeGateway, payment_method: str = "pm_card_visa", *,
               amount: int = 3000, order_id: str | None = None) -> IntentState:
    order_id = order_id or str(uuid.uuid4())
    return gateway.create_intent(
        amount=amount, currency="USD", payment_method=payment_method,
        metadata={"order_id": order_id, "attempt": "1"}, idempotency_key=f"{order_id}:1:create")


def confirmed(gateway: StripeGateway, payment_method: str = "pm_card_visa") -> IntentState:
    intent = new_intent(gateway, payment_method)
    return gateway.confirm(intent.reference, idempotency_key=f"{intent.reference}:confirm")


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- against localstripe -------------------------------------------------------------


def test_stripe_gateway_satisfies_the_gateway_protocol(stripe_gateway: StripeGateway) -> None:
    as_protocol: PaymentGateway = stripe_gateway

    assert as_protocol.name == "stripe"


def test_create_makes_an_unconfirmed_manual_capture_intent_tagged_with_the_order(
    stripe_gateway: StripeGateway, localstripe_url: str,
) -> None:
    order_id = str(uuid.uuid4())

    intent = new_intent(stripe_gateway, order_id=order_id)

    assert intent.reference.startswith("pi_")
    assert intent.status == "requires_confirmation"
    assert intent.client_secret is not None
    [stored] = intents_for_order(localstripe_url, order_id)
    assert stored["id"] == intent.reference
    assert stored["capture_method"] == "manual"
    assert stored["currency"] == "usd"
    assert stored["metadata"] == {"order_id": order_id, "attempt": "1"}


def test_confirm_then_partial_capture_keeps_only_the_captured_amount(
    stripe_gateway: StripeGateway,
) -> None:
    intent = confirmed(stripe_gateway)
    assert intent.status == "requires_capture"

    captured = stripe_gateway.capture(intent.reference, amount=2000,
                                      idempotency_key=f"{intent.reference}:capture")

    assert captured.status == "succeeded"
    assert captured.amount == 3000
    # localstripe books a partial capture as a capture of the whole plus a refund of the
    # rest (Stripe reports amount_received=2000); either way the shop keeps 2000.
    kept = stripe_gateway.retrieve(intent.reference)
    assert kept.amount_received - kept.amount_refunded == 2000


def test_full_capture_receives_the_whole_amount(stripe_gateway: StripeGateway) -> None:
    intent = confirmed(stripe_gateway)

    captured = stripe_gateway.capture(intent.reference, amount=3000,
                                      idempotency_key=f"{intent.reference}:capture")

    assert (captured.status, captured.amount_received) == ("succeeded", 3000)


def test_declining_card_raises_payment_declined_and_leaves_the_decline_visible(
    stripe_gateway: StripeGateway,
) -> None:
    intent = new_intent(stripe_gateway, DECLINING_PAYMENT_METHOD)

    with pytest.raises(PaymentDeclined) as declined:
        stripe_gateway.confirm(intent.reference, idempotency_key=f"{intent.reference}:confirm")

    assert declined.value.reason == "card_declined"
    assert isinstance(declined.value.__cause__, stripe.CardError)
    after = stripe_gateway.retrieve(intent.reference)
    assert after.status == "requires_payment_method"
    assert after.decline_code == "card_declined"
    assert after.decline_message == "Your card was declined."


def test_cancel_releases_an_authorized_intent(stripe_gateway: StripeGateway) -> None:
    intent = confirmed(stripe_gateway)

    cancelled = stripe_gateway.cancel(intent.reference,
                                      idempotency_key=f"{intent.reference}:cancel")

    assert cancelled.status == "canceled"
    assert stripe_gateway.retrieve(intent.reference).status == "canceled"


def test_cancel_of_a_cancelled_intent_is_a_provider_error(stripe_gateway: StripeGateway) -> None:
    intent = confirmed(stripe_gateway)
    stripe_gateway.cancel(intent.reference, idempotency_key=f"{intent.reference}:cancel")

    with pytest.raises(PaymentProviderError):
        stripe_gateway.cancel(intent.reference, idempotency_key=f"{intent.reference}:cancel2")


def test_three_d_secure_card_requires_action_with_a_client_secret(
    stripe_gateway: StripeGateway, localstripe_url: str,
) -> None:
    card = create_card_payment_method(localstripe_url, THREE_DS_CARD)

    state = confirmed(stripe_gateway, card)

    assert state.status == "requires_action"
    assert state.client_secret is not None


def test_passed_authentication_leaves_the_intent_authorized(
    stripe_gateway: StripeGateway, localstripe_url: str,
) -> None:
    state = confirmed(stripe_gateway, create_card_payment_method(localstripe_url, THREE_DS_CARD))
    assert state.client_secret is not None

    authenticate(localstripe_url, state.reference, client_secret=state.client_secret,
                 success=True)

    assert stripe_gateway.retrieve(state.reference).status == "requires_capture"


def test_failed_authentication_reads_as_authentication_failed(
    stripe_gateway: StripeGateway, localstripe_url: str,
) -> None:
    state = confirmed(stripe_gateway, create_card_payment_method(localstripe_url, THREE_DS_CARD))
    assert state.client_secret is not None

    authenticate(localstripe_url, state.reference, client_secret=state.client_secret,
                 success=False)

    after = stripe_gateway.retrieve(state.reference)
    assert after.status == "requires_payment_method"
    assert after.decline_code == "authentication_failed"


def test_authenticated_card_that_then_declines_reads_as_card_declined(
    stripe_gateway: StripeGateway, localstripe_url: str,
) -> None:
    card = create_card_payment_method(localstripe_url, THREE_DS_THEN_DECLINED_CARD)
    state = confirmed(stripe_gateway, card)
    assert state.client_secret is not None

    with pytest.raises(httpx.HTTPStatusError, match="402"):  # localstripe answers 402 here
        authenticate(localstripe_url, state.reference, client_secret=state.client_secret,
                     success=True)

    after = stripe_gateway.retrieve(state.reference)
    assert (after.status, after.decline_code) == ("requires_payment_method", "card_declined")


def test_unknown_intent_is_a_provider_error(stripe_gateway: StripeGateway) -> None:
    with pytest.raises(PaymentProviderError) as refused:
        stripe_gateway.retrieve("pi_doesnotexist")

    assert isinstance(refused.value.__cause__, stripe.InvalidRequestError)


def test_payment_method_localstripe_does_not_know_is_a_provider_error(
    stripe_gateway: StripeGateway,
) -> None:
    with pytest.raises(PaymentProviderError, match="404"):
        new_intent(stripe_gateway, "pm_card_chargeDeclined")


def test_rejected_api_key_is_an_operator_alarm_not_a_refusal(localstripe_url: str) -> None:
    gateway = StripeGateway(api_key="rk_not_a_secret_key", api_base=localstripe_url,
                            emulator=True)

    with pytest.raises(PaymentAuthError, match="401"):
        gateway.retrieve("pi_anything")
    gateway.close()


def test_unreachable_provider_is_transient() -> None:
    gateway = StripeGateway(api_key="sk_test_shop",
                            api_base=f"http://127.0.0.1:{closed_port()}", emulator=True)

    with pytest.raises(PaymentTransientError) as failed:
        new_intent(gateway)

    assert isinstance(failed.value.__cause__, stripe.APIConnectionError)
    gateway.close()


def test_fetch_intents_pages_through_every_intent(
    stripe_gateway: StripeGateway, localstripe_url: str,
) -> None:
    mine = {new_intent(stripe_gateway).reference for _ in range(3)}

    listed = [pi["id"] for pi in fetch_intents(localstripe_url, page_size=2)]

    assert mine <= set(listed)
    assert len(listed) == len(set(listed))
    assert listed == [pi["id"] for pi in fetch_intents(localstripe_url)]


# --- on the wire, against a recording fake ---------------------------------------------


def intent_body(**overrides: Any) -> dict[str, Any]:
    body = {"id": "pi_fake", "object": "payment_intent", "status": "requires_confirmation",
            "amount": 3000, "amount_received": 0, "currency": "usd",
            "client_secret": "pi_fake_secret_x", "last_payment_error": None,
            "latest_charge": None, "metadata": {}}
    return {**body, **overrides}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, list[str]]


@dataclass
class FakeStripe:
    """Answers every request with the next queued reply and records what it was sent."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    replies: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def reply(self, status: int, body: dict[str, Any]) -> None:
        self.replies.append((status, body))


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode()) if length else {}
            fake.requests.append(Recorded(self.command, self.path, dict(self.headers), form))
            status, body = fake.replies.pop(0) if fake.replies else (200, intent_body())
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def wire_gateway(fake_stripe: FakeStripe) -> Iterator[StripeGateway]:
    gateway = StripeGateway(api_key="sk_test_shop", api_base=fake_stripe.url)
    yield gateway
    gateway.close()


def test_create_sends_the_callers_idempotency_key_and_a_manual_capture_intent(
    wire_gateway: StripeGateway, fake_stripe: FakeStripe,
) -> None:
    wire_gateway.create_intent(amount=3000, currency="USD", payment_method="pm_card_visa",
                               metadata={"order_id": "o-1", "attempt": "2"},
                               idempotency_key="o-1:2:create")

    [sent] = fake_stripe.requests
    assert (sent.method, sent.path) == ("POST", "/v1/payment_intents")
    assert sent.headers["Idempotency-Key"] == "o-1:2:create"
    assert sent.headers["Authorization"] == "Bearer sk_test_shop"
    assert sent.form["amount"] == ["3000"]
    assert sent.form["currency"] == ["usd"]
    assert sent.form["payment_method"] == ["pm_card_visa"]
    assert sent.form["capture_method"] == ["manual"]
    assert sent.form["confirm"] == ["false"]
    assert sent.form["metadata[order_id]"] == ["o-1"]
    assert sent.form["metadata[attempt]"] == ["2"]
    assert sent.form["automatic_payment_methods[allow_redirects]"] == ["never"]


def test_emulator_mode_leaves_out_fields_localstripe_refuses(fake_stripe: FakeStripe) -> None:
    gateway = StripeGateway(api_key="sk_test_shop", api_base=fake_stripe.url, emulator=True)

    new_intent(gateway)

    assert not any(key.startswith("automatic_payment_methods")
                   for key in fake_stripe.requests[0].form)
    gateway.close()


def test_every_write_carries_its_idempotency_key(
    wire_gateway: StripeGateway, fake_stripe: FakeStripe,
) -> None:
    wire_gateway.confirm("pi_fake", idempotency_key="k:confirm")
    wire_gateway.capture("pi_fake", amount=1200, idempotency_key="k:capture")
    wire_gateway.cancel("pi_fake", idempotency_key="k:cancel")

    sent = [(r.path, r.headers["Idempotency-Key"]) for r in fake_stripe.requests]
    assert sent == [("/v1/payment_intents/pi_fake/confirm", "k:confirm"),
                    ("/v1/payment_intents/pi_fake/capture", "k:capture"),
                    ("/v1/payment_intents/pi_fake/cancel", "k:cancel")]
    assert fake_stripe.requests[1].form["amount_to_capture"] == ["1200"]


def test_a_failed_request_is_not_retried_by_the_sdk(
    wire_gateway: StripeGateway, fake_stripe: FakeStripe,
) -> None:
    fake_stripe.reply(500, {"error": {"type": "api_error", "message": "boom"}})

    with pytest.raises(PaymentTransientError):
        wire_gateway.retrieve("pi_fake")

    assert len(fake_stripe.requests) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, {"type": "invalid_request_error", "code": "rate_limit", "message": "slow down"}),
        (429, {"type": "invalid_request_error", "code": "lock_timeout", "message": "locked"}),
        (409, {"type": "idempotency_error", "code": "idempotency_key_in_use", "message": "busy"}),
        (500, {"type": "api_error", "message": "boom"}),
        (503, {"type": "api_error", "message": "unavailable"}),
    ],
)
def test_provider_trouble_on_the_wire_is_transient(
    wire_gateway: StripeGateway, fake_stripe: FakeStripe, status: int, error: dict[str, Any],
) -> None:
    fake_stripe.reply(status, {"error": error})

    with pytest.raises(PaymentTransientError, match=str(status)):
        wire_gateway.confirm("pi_fake", idempotency_key="k:confirm")


def test_insufficient_funds_decline_on_the_wire_keeps_its_reason(
    wire_gateway: StripeGateway, fake_stripe: FakeStripe,
) -> None:
    fake_stripe.reply(402, {"error": {"type": "card_error", "code": "card_declined",
                                      "decline_code": "insufficient_funds",
                                      "message": "Your card has insufficient funds."}})

    with pytest.raises(PaymentDeclined) as declined:
        wire_gateway.confirm("pi_fake", idempotency_key="k:confirm")

    assert declined.value.reason == "insufficient_funds"
    assert declined.value.message == "Your card has insufficient funds."


def test_retrieve_reads_the_decline_of_a_failed_intent(
    wire_gateway: StripeGateway, fake_stripe: FakeStripe,
) -> None:
    fake_stripe.reply(200, intent_body(
        status="requires_payment_method",
        last_payment_error={"type": "card_error", "code": "card_declined",
                            "decline_code": "insufficient_funds",
                            "message": "Your card has insufficient funds."}))

    state = wire_gateway.retrieve("pi_fake")

    assert state.decline_code == "insufficient_funds"
    assert state.decline_message == "Your card has insufficient funds."


def test_retrieve_of_a_healthy_intent_has_no_decline(
    wire_gateway: StripeGateway, fake_stripe: FakeStripe,
) -> None:
    fake_stripe.reply(200, intent_body(status="succeeded", amount_received=2500,
                                       latest_charge="ch_1"))

    state = wire_gateway.retrieve("pi_fake")

    assert (state.status, state.amount_received, state.decline_code) == ("succeeded", 2500, None)


# --- error mapping, from constructed SDK errors -----------------------------------------


def card_error(code: str, decline_code: str | None = None) -> stripe.CardError:
    body: dict[str, Any] = {"type": "card_error", "code": code, "message": "declined"}
    if decline_code is not None:
        body["decline_code"] = decline_code
    return stripe.CardError("declined", None, code, http_status=402, json_body={"error": body})


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (card_error("card_declined"), "card_declined"),
        (card_error("card_declined", "generic_decline"), "card_declined"),
        (card_error("card_declined", "insufficient_funds"), "insufficient_funds"),
        (card_error("card_declined", "fraudulent"), "card_declined"),
        (card_error("expired_card"), "expired_card"),
        (card_error("incorrect_cvc"), "incorrect_cvc"),
        (card_error("payment_intent_authentication_failure"), "authentication_failed"),
        (stripe.CardError("declined", None, None), "card_declined"),
    ],
)
def test_card_errors_become_declines_with_a_stable_reason(
    error: stripe.CardError, reason: str,
) -> None:
    mapped = translate_error(error)

    assert isinstance(mapped, PaymentDeclined)
    assert mapped.reason == reason


@pytest.mark.parametrize(
    "error",
    [
        stripe.APIConnectionError("network down"),
        stripe.RateLimitError("too many", http_status=429),
        stripe.APIError("server error", http_status=502),
        stripe.APIError("bad body", http_status=None),
        stripe.APIError("conflict", http_status=409, code="idempotency_key_in_use"),
        stripe.InvalidRequestError("locked", None, "lock_timeout", http_status=400),
    ],
)
def test_network_and_server_errors_become_transient(error: stripe.StripeError) -> None:
    assert isinstance(translate_error(error), PaymentTransientError)


def test_stripe_should_retry_decides_over_the_status() -> None:
    """Issue 19: Stripe's ``Stripe-Should-Retry`` header is honoured."""
    told_to_retry = translate_error(stripe.InvalidRequestError(
        "lock timeout", param=None, http_status=400, headers={"Stripe-Should-Retry": "true"}))
    told_not_to = translate_error(stripe.APIError(
        "do not retry", http_status=500, headers={"Stripe-Should-Retry": "false"}))
    assert isinstance(told_to_retry, PaymentTransientError)
    assert isinstance(told_not_to, PaymentProviderError)


def test_an_idempotency_error_is_a_mismatch_never_retried() -> None:
    mapped = translate_error(stripe.IdempotencyError(
        "Keys for idempotent requests can only be used with the same parameters",
        http_status=400, code="idempotency_error"))
    assert isinstance(mapped, IdempotencyMismatch)


def test_a_confirming_create_declines_with_its_intent(localstripe_url: str) -> None:
    """Against the emulator the confirming create is create, then confirm (localstripe
    skips its decline simulation on a create that confirms); the decline names the intent."""
    gateway = StripeGateway(api_key="sk_test_x", api_base=localstripe_url, emulator=True)
    with pytest.raises(PaymentDeclined) as declined:
        gateway.create_intent(amount=1000, currency="usd",
                              payment_method=DECLINING_PAYMENT_METHOD, metadata={},
                              idempotency_key=f"{uuid.uuid4()}:authorize", confirm=True)
    assert declined.value.reference is not None
    assert gateway.retrieve(declined.value.reference).status == "requires_payment_method"
    authorized = gateway.create_intent(
        amount=1000, currency="usd", payment_method="pm_card_visa", metadata={},
        idempotency_key=f"{uuid.uuid4()}:authorize", confirm=True)
    assert authorized.status == "requires_capture"


def test_a_429_is_retried_after_stripes_retry_after() -> None:
    mapped = translate_error(stripe.RateLimitError("slow down", http_status=429,
                                                   headers={"Retry-After": "7"}))
    assert isinstance(mapped, PaymentRateLimited)
    assert mapped.retry_after == 7.0
    bare = translate_error(stripe.RateLimitError("slow down", http_status=429))
    assert isinstance(bare, PaymentRateLimited)
    assert bare.retry_after == 1.0


@pytest.mark.parametrize("error", [stripe.AuthenticationError("bad key", http_status=401),
                                   stripe.PermissionError("forbidden", http_status=403)])
def test_a_refused_key_is_an_alarm_retried_like_an_outage(error: stripe.StripeError) -> None:
    # Not the customer's fault: it must not fail orders as "rejected", nor spin forever.
    mapped = translate_error(error)
    assert isinstance(mapped, PaymentAuthError)
    assert isinstance(mapped, PaymentTransientError)
    assert not isinstance(mapped, PaymentProviderError)


@pytest.mark.parametrize(
    "error",
    [
        stripe.InvalidRequestError("No such payment_intent", "intent", "resource_missing",
                                   http_status=404),
        stripe.InvalidRequestError("unexpected state", None, "payment_intent_unexpected_state",
                                   http_status=400),
        stripe.IdempotencyError("same key, other parameters", http_status=400),
    ],
)
def test_refusals_become_provider_errors(error: stripe.StripeError) -> None:
    mapped = translate_error(error)

    assert isinstance(mapped, PaymentProviderError)
    assert not isinstance(mapped, PaymentTransientError)


# --- choosing the provider ---------------------------------------------------------------


def test_build_gateway_picks_stripe_when_a_key_is_set() -> None:
    gateway = build_gateway(Settings(stripe_api_key="sk_test_shop"))

    assert isinstance(gateway, StripeGateway)
    assert gateway.name == "stripe"


def test_build_gateway_picks_the_dummy_without_a_key() -> None:
    gateway = build_gateway(Settings())

    assert isinstance(gateway, DummyGateway)
    assert gateway.name == "dummy"


def test_build_gateway_honours_an_explicit_dummy_choice() -> None:
    settings = Settings(payment_provider="dummy", stripe_api_key="sk_test_shop")

    assert isinstance(build_gateway(settings), DummyGateway)


def test_build_gateway_refuses_stripe_without_a_key() -> None:
    with pytest.raises(PaymentProviderError, match="SHOP_STRIPE_API_KEY"):
        build_gateway(Settings(payment_provider="stripe"))


def test_built_dummy_gateway_keeps_state_under_var(tmp_path: Path) -> None:
    gateway = build_gateway(Settings())

    intent = gateway.create_intent(amount=100, currency="USD", payment_method="pm_card_visa",
                                   metadata={}, idempotency_key="k")

    assert (tmp_path / "var" / "dummy_payments" / f"{intent.reference}.json").exists()


def test_built_stripe_gateway_talks_to_the_configured_emulator(localstripe_url: str) -> None:
    gateway = build_gateway(Settings(stripe_api_key="sk_test_shop",
                                     stripe_api_base=localstripe_url))

    intent = gateway.create_intent(amount=100, currency="USD", payment_method="pm_card_visa",
                                   metadata={"order_id": "built"}, idempotency_key="k")

    assert intent.status == "requires_confirmation"
    assert any(pi["id"] == intent.reference for pi in fetch_intents(localstripe_url))
