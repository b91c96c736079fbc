"""The payment provider boundary: one interface, the Stripe implementation, errors.

This is the only module that imports ``stripe``: ``StripeGateway`` speaks to Stripe
(or localstripe) through one ``StripeClient``, and ``translate_error`` turns every SDK
error into ours, with stable decline reasons from ``decline_reason``::

    PaymentError
    ├── PaymentDeclined          the customer's card said no (reason: card_declined, …)
    ├── PaymentActionRequired    never raised; shown as IntentState.status
    ├── PaymentTransientError    network, timeouts, 5xx, 429, lock timeouts: retry
    └── PaymentProviderError     anything else the provider refused: do not retry
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import stripe

if TYPE_CHECKING:
    from stripe.params import PaymentIntentCreateParams


class PaymentError(Exception):
    """Base of every payment-provider error."""


class PaymentDeclined(PaymentError):
    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.message = message or reason


class PaymentTransientError(PaymentError):
    """Worth retrying: the provider may answer next time."""


class PaymentProviderError(PaymentError):
    """The provider refused the request for a reason retrying will not fix."""


@dataclass(frozen=True, slots=True)
class IntentState:
    """A PaymentIntent as the shop needs to see it.

    ``status`` uses Stripe's names: requires_payment_method, requires_confirmation,
    requires_action, processing, requires_capture, succeeded, canceled.
    """

    reference: str
    status: str
    amount: int
    amount_received: int = 0
    client_secret: str | None = None
    decline_code: str | None = None
    decline_message: str | None = None


class PaymentGateway(Protocol):
    """What the shop asks of a payment provider. Every write takes an idempotency key."""

    name: str

    def create_intent(
        self, *, amount: int, currency: str, payment_method: str,
        metadata: dict[str, str], idempotency_key: str,
    ) -> IntentState:
        """Create an unconfirmed, manual-capture intent."""
        ...

    def retrieve(self, reference: str) -> IntentState: ...

    def confirm(self, reference: str, *, idempotency_key: str) -> IntentState:
        """Authorize; raises PaymentDeclined on a decline."""
        ...

    def capture(self, reference: str, *, amount: int, idempotency_key: str) -> IntentState: ...

    def cancel(self, reference: str, *, idempotency_key: str) -> IntentState: ...


# Provider codes (Stripe's ``decline_code`` or ``code``) -> the shop's stable reasons.
# Anything else a card issuer says becomes ``card_declined``, as Stripe advises.
DECLINE_REASONS: dict[str, str] = {
    "insufficient_funds": "insufficient_funds",
    "expired_card": "expired_card",
    "incorrect_cvc": "incorrect_cvc",
    "payment_intent_authentication_failure": "authentication_failed",
    "authentication_required": "authentication_failed",
}
TRANSIENT_CODES = frozenset({"lock_timeout", "idempotency_key_in_use", "rate_limit"})


def decline_reason(code: str | None, decline_code: str | None = None) -> str:
    """The shop's stable reason for a provider's decline codes."""
    for candidate in (decline_code, code):
        if candidate in DECLINE_REASONS:
            return DECLINE_REASONS[candidate]
    return "card_declined"


def translate_error(exc: stripe.StripeError) -> PaymentError:
    """The shop's exception for a Stripe SDK error (the caller raises it ``from exc``)."""
    message = exc.user_message or type(exc).__name__
    status = exc.http_status
    if isinstance(exc, stripe.CardError):
        decline_code = exc.error.decline_code if exc.error is not None else None
        return PaymentDeclined(decline_reason(exc.code, decline_code), message)
    transient = (
        isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError)
        or exc.code in TRANSIENT_CODES
        or (isinstance(exc, stripe.APIError) and status in (None, 409))
        or (status is not None and (status >= 500 or status in (409, 429)))
    )
    kind = PaymentTransientError if transient else PaymentProviderError
    return kind(f"stripe {type(exc).__name__} (HTTP {status}): {message}")


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except stripe.StripeError as exc:
        raise translate_error(exc) from exc


def _amount_received(intent: stripe.PaymentIntent) -> int:
    received = getattr(intent, "amount_received", None)
    if isinstance(received, int):
        return received
    # localstripe omits amount_received; derive it from the expanded latest charge.
    charge = getattr(intent, "latest_charge", None)
    if isinstance(charge, stripe.Charge) and getattr(charge, "captured", False):
        return int(charge.amount) - int(getattr(charge, "amount_refunded", 0) or 0)
    return 0


def _state(intent: stripe.PaymentIntent) -> IntentState:
    error = getattr(intent, "last_payment_error", None)
    failed = error is not None and intent.status in ("requires_payment_method", "canceled")
    code = getattr(error, "code", None) if failed else None
    return IntentState(
        reference=intent.id,
        status=intent.status,
        amount=intent.amount,
        amount_received=_amount_received(intent),
        client_secret=getattr(intent, "client_secret", None),
        decline_code=decline_reason(code, getattr(error, "decline_code", None)) if failed else None,
        decline_message=getattr(error, "message", None) if failed else None,
    )


class StripeGateway:
    """PaymentIntents at Stripe (or a Stripe emulator at ``api_base``), manual capture.

    Real Stripe is told the intent takes no redirect-based methods, so a server-side
    confirm needs no ``return_url``; ``emulator=True`` leaves that field out, because
    localstripe refuses fields it does not know.
    """

    name = "stripe"

    def __init__(self, *, api_key: str, api_base: str | None = None,
                 timeout: float = 10.0, emulator: bool = False) -> None:
        self._emulator = emulator
        self._http = stripe.RequestsClient(timeout=timeout)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=0,
            http_client=self._http,
        )
        self._intents = self._client.v1.payment_intents

    def create_intent(
        self, *, amount: int, currency: str, payment_method: str,
        metadata: dict[str, str], idempotency_key: str,
    ) -> IntentState:
        """Create an unconfirmed, manual-capture card intent."""
        params: PaymentIntentCreateParams = {
            "amount": amount,
            "currency": currency.lower(),
            "payment_method": payment_method,
            "capture_method": "manual",
            "confirm": False,
            "metadata": metadata,
        }
        if not self._emulator:
            params["automatic_payment_methods"] = {"enabled": True, "allow_redirects": "never"}
        with _translated():
            intent = self._intents.create(
                params=params, options={"idempotency_key": idempotency_key})
        return _state(intent)

    def retrieve(self, reference: str) -> IntentState:
        """The intent as Stripe sees it now."""
        with _translated():
            return _state(self._intents.retrieve(reference))

    def confirm(self, reference: str, *, idempotency_key: str) -> IntentState:
        """Authorize; raises PaymentDeclined on a decline."""
        with _translated():
            intent = self._intents.confirm(
                reference, options={"idempotency_key": idempotency_key})
        return _state(intent)

    def capture(self, reference: str, *, amount: int, idempotency_key: str) -> IntentState:
        """Take ``amount`` (at most the authorized amount) of an authorized intent."""
        with _translated():
            intent = self._intents.capture(
                reference, params={"amount_to_capture": amount},
                options={"idempotency_key": idempotency_key})
        return _state(intent)

    def cancel(self, reference: str, *, idempotency_key: str) -> IntentState:
        """Release an intent that has not been captured."""
        with _translated():
            intent = self._intents.cancel(
                reference, options={"idempotency_key": idempotency_key})
        return _state(intent)

    def close(self) -> None:
        """Close this thread's pooled HTTP connections."""
        self._http.close()  # type: ignore[no-untyped-call]
