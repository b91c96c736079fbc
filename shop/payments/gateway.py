"""The payment provider boundary: one interface, the Stripe implementation, errors.

This is the only module that imports ``stripe``: ``StripeGateway`` speaks to Stripe
(or localstripe) through one ``StripeClient``, and ``translate_error`` turns every SDK
error into ours, with stable decline reasons from ``decline_reason``::

    PaymentError
    ├── PaymentDeclined             the customer's card said no (reason: card_declined, …)
    ├── PaymentTransientError       network, timeouts, 5xx, lock timeouts: ask again
    │   ├── PaymentRateLimited      429, or our own pacing: ask again after ``retry_after``
    │   └── PaymentAuthError        401/403: a revoked or wrong key, an operator alarm
    └── PaymentProviderError        the provider refused the request: retrying won't help

A transient error says nothing about whether the provider applied the request: the
answer may have been lost after the money moved. Callers find out with ``retrieve``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import stripe

from shop.exceptions import PermanentError, SlowDown, TransientError

if TYPE_CHECKING:
    from stripe.params import PaymentIntentCreateParams

# One provider call waits at most CONNECT + READ seconds, after at most MAX_PACING_WAIT
# for its turn (``shop.payments.budget``); a payment step makes at most
# MAX_CALLS_PER_STEP calls, and its soft time limit is above their sum.
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 3.0
MAX_PACING_WAIT = 2.0
CALL_TIMEOUT = CONNECT_TIMEOUT + READ_TIMEOUT + MAX_PACING_WAIT
MAX_CALLS_PER_STEP = 5  # the longest path: a release's retrieve, cancel, retrieve, refund,
# retrieve; a payment step makes two at most (create and cancel, or capture and retrieve)


# Each operation of the gateway is its own endpoint at the provider, with its own rate
# limit (Stripe: 25/s each by default) under the account's.
ENDPOINTS: dict[str, str] = {
    "create_intent": "POST /v1/payment_intents",
    "retrieve": "GET /v1/payment_intents/:id",
    "confirm": "POST /v1/payment_intents/:id/confirm",
    "capture": "POST /v1/payment_intents/:id/capture",
    "cancel": "POST /v1/payment_intents/:id/cancel",
    "refund": "POST /v1/refunds",
    "list_intents": "GET /v1/payment_intents",
}


class PaymentError(Exception):
    """Base of every payment-provider error."""


class PaymentDeclined(PaymentError):
    """The card said no; ``reference`` is the intent it was said on, when one was made
    (a create that confirms in the same call declines with the intent's id)."""

    def __init__(self, reason: str, message: str = "", reference: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.message = message or reason
        self.reference = reference


class PaymentTransientError(PaymentError, TransientError):
    """Worth retrying: the provider may answer next time."""


class PaymentRateLimited(PaymentTransientError, SlowDown):
    """The provider (or the shop's own pacing) asks us to slow down: not a failure of the
    step; it is retried after ``retry_after`` seconds without counting an attempt."""


class PaymentAuthError(PaymentTransientError):
    """The provider refused our credentials: an operator must fix the key."""


class PaymentProviderError(PaymentError, PermanentError):
    """The provider refused the request for a reason retrying will not fix."""


class IdempotencyMismatch(PaymentProviderError):
    """An idempotency key used again with other parameters (Stripe's 400
    ``idempotency_error``): a bug in the caller, never retried."""


class SignatureInvalid(PaymentError):
    """A webhook whose signature does not verify (bad, missing, stale or altered)."""


class IntentStatus(StrEnum):
    """A PaymentIntent's status, in Stripe's names."""

    REQUIRES_PAYMENT_METHOD = "requires_payment_method"
    REQUIRES_CONFIRMATION = "requires_confirmation"
    REQUIRES_ACTION = "requires_action"
    PROCESSING = "processing"
    REQUIRES_CAPTURE = "requires_capture"
    SUCCEEDED = "succeeded"
    CANCELED = "canceled"

    @property
    def cancellable(self) -> bool:
        """Stripe cancels an intent only before it has taken money."""
        return self not in (IntentStatus.PROCESSING, IntentStatus.SUCCEEDED,
                            IntentStatus.CANCELED)


@dataclass(frozen=True, slots=True)
class IntentState:
    """A PaymentIntent as the shop needs to see it."""

    reference: str
    status: IntentStatus
    amount: int
    currency: str = ""
    amount_received: int = 0
    amount_refunded: int = 0
    client_secret: str | None = None
    decline_code: str | None = None
    decline_message: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    created: int = 0
    # A keyed request's stored answer given again (Stripe's ``Original-Request`` header
    # says so); it does not take part in equality: the intent is the same.
    replayed: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", IntentStatus(self.status))


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """A verified webhook event: its id, type, creation time and JSON body."""

    id: str
    type: str
    created: int
    payload: dict[str, Any]


WEBHOOK_TOLERANCE = 300  # seconds: Stripe's own default
_EVENT_WORD = re.compile(r"[\x21-\x7e]{1,255}")  # an event's id and type: printable ASCII


def verify_event(payload: bytes, signature: str | None, secrets: Sequence[str],
                 *, tolerance: int = WEBHOOK_TOLERANCE) -> ProviderEvent:
    """Check ``Stripe-Signature`` over the raw body with each secret (a rotation has
    two); ``SignatureInvalid`` unless one verifies and the body is an event."""
    if not signature:
        raise SignatureInvalid("no Stripe-Signature header")
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, signature, secret, tolerance)
        except stripe.SignatureVerificationError:
            continue
        except UnicodeDecodeError as exc:
            raise SignatureInvalid(f"the body is not UTF-8: {exc}") from exc
        return _event(payload)
    raise SignatureInvalid("no configured secret verifies the signature")


def _event(payload: bytes) -> ProviderEvent:
    """The signed body as the provider sent it, in plain JSON types.

    Not the SDK's event object: that turns Stripe's ``*_decimal`` strings (a price's
    ``unit_amount_decimal``, at any depth) into ``Decimal``, which no JSON column stores,
    and the ledger keeps what was signed, not one SDK release's reading of it.
    """
    try:
        body = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    # Signed, but not an event's JSON (or nested past what the decoder recurses into).
    except (ValueError, RecursionError) as exc:
        raise SignatureInvalid(f"the signed body is not an event: {exc}") from exc
    if not isinstance(body, dict) or not all(
            isinstance(body.get(key), str) and _EVENT_WORD.fullmatch(body[key])
            for key in ("id", "type")):
        raise SignatureInvalid("the signed body has no event id or type")
    created = body.get("created")
    return ProviderEvent(id=body["id"], type=body["type"],
                         created=created if isinstance(created, int) else 0, payload=body)


def _no_constant(name: str) -> Any:
    """``NaN`` and ``Infinity`` are not JSON (and PostgreSQL refuses them)."""
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True, slots=True)
class RefundState:
    reference: str
    amount: int
    status: str


class PaymentGateway(Protocol):
    """What the shop asks of a payment provider. Every write takes an idempotency key."""

    name: str

    def create_intent(
        self, *, amount: int, currency: str, payment_method: str,
        metadata: dict[str, str], idempotency_key: str, confirm: bool = False,
    ) -> IntentState:
        """Create a manual-capture intent; ``confirm`` authorizes it in the same call
        (``requires_capture``, ``requires_action``, or ``PaymentDeclined``)."""
        ...

    def retrieve(self, reference: str) -> IntentState: ...

    def confirm(self, reference: str, *, idempotency_key: str) -> IntentState:
        """Authorize; raises PaymentDeclined on a decline."""
        ...

    def capture(self, reference: str, *, amount: int, idempotency_key: str) -> IntentState: ...

    def cancel(self, reference: str, *, idempotency_key: str) -> IntentState: ...

    def refund(self, reference: str, *, amount: int, idempotency_key: str) -> RefundState:
        """Give back ``amount`` of a captured intent."""
        ...

    def list_intents(self, *, created_after: int) -> Iterator[IntentState]:
        """Every intent created after the Unix time ``created_after``."""
        ...


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
        intent = getattr(exc.error, "payment_intent", None) if exc.error is not None else None
        return PaymentDeclined(decline_reason(exc.code, decline_code), message,
                               reference=getattr(intent, "id", None))
    if exc.code == "idempotency_error":
        return IdempotencyMismatch(f"stripe idempotency_error (HTTP {status}): {message}")
    text = f"stripe {type(exc).__name__} (HTTP {status}): {message}"
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return PaymentAuthError(text)
    if isinstance(exc, stripe.RateLimitError) or status == 429:
        return PaymentRateLimited(text, retry_after=_retry_after(exc.headers))
    should_retry = str((exc.headers or {}).get("Stripe-Should-Retry", "")).lower()
    if should_retry in ("true", "false"):  # Stripe says, and knows better than the status
        return (PaymentTransientError if should_retry == "true" else PaymentProviderError)(text)
    transient = (
        isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError)
        or exc.code in TRANSIENT_CODES
        or (isinstance(exc, stripe.APIError) and status in (None, 409))
        or (status is not None and (status >= 500 or status in (409, 429)))
    )
    kind = PaymentTransientError if transient else PaymentProviderError
    return kind(text)


def _retry_after(headers: Any) -> float:
    """Stripe's ``Retry-After`` in seconds (1 s when it sends none), capped at a minute."""
    try:
        value = float((headers or {}).get("Retry-After") or 1.0)
    except (TypeError, ValueError):
        value = 1.0
    return min(max(value, 0.1), 60.0)


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except stripe.StripeError as exc:
        raise translate_error(exc) from exc


def _charge_amounts(intent: stripe.PaymentIntent) -> tuple[int, int]:
    """(captured, refunded) of the intent's latest charge, when it is expanded."""
    charge: Any = getattr(intent, "latest_charge", None)
    if not isinstance(charge, stripe.Charge) or not getattr(charge, "captured", False):
        return 0, 0
    return int(charge.amount), int(getattr(charge, "amount_refunded", 0) or 0)


def _metadata(intent: stripe.PaymentIntent) -> dict[str, str]:
    metadata: Any = getattr(intent, "metadata", None)
    if metadata is None:
        return {}
    plain = metadata.to_dict() if hasattr(metadata, "to_dict") else dict(metadata)
    return {str(k): str(v) for k, v in plain.items()}


def _state(intent: stripe.PaymentIntent) -> IntentState:
    error = getattr(intent, "last_payment_error", None)
    status = IntentStatus(intent.status)
    failed = error is not None and status in (IntentStatus.REQUIRES_PAYMENT_METHOD,
                                              IntentStatus.CANCELED)
    code = getattr(error, "code", None) if failed else None
    captured, refunded = _charge_amounts(intent)
    received = getattr(intent, "amount_received", None)
    return IntentState(
        reference=intent.id,
        status=status,
        amount=intent.amount,
        currency=str(getattr(intent, "currency", "") or ""),
        # localstripe omits amount_received; its captured charge's amount says it instead.
        amount_received=received if isinstance(received, int) else captured,
        amount_refunded=refunded,
        client_secret=getattr(intent, "client_secret", None),
        decline_code=decline_reason(code, getattr(error, "decline_code", None)) if failed else None,
        decline_message=getattr(error, "message", None) if failed else None,
        metadata=_metadata(intent),
        created=int(getattr(intent, "created", 0) or 0),
        replayed=_replayed(intent),
    )


def _replayed(intent: stripe.PaymentIntent) -> bool:
    """Whether Stripe answered with a stored response (``Original-Request`` is set)."""
    response: Any = getattr(intent, "last_response", None)
    headers: Any = getattr(response, "headers", None) or {}
    return bool(headers.get("Original-Request") or headers.get("original-request"))


class StripeGateway:
    """PaymentIntents at Stripe (or a Stripe emulator at ``api_base``), manual capture.

    Real Stripe is told the intent takes no redirect-based methods, so a server-side
    confirm needs no ``return_url``; ``emulator=True`` leaves that field out, because
    localstripe refuses fields it does not know.
    """

    name = "stripe"

    def __init__(self, *, api_key: str, api_base: str | None = None,
                 timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
                 emulator: bool = False) -> None:
        self._emulator = emulator
        # Stripe replays a keyed request's answer; localstripe ignores keys, so against
        # it the shop stores an intent's id before confirming it (``authorize``).
        self.honours_keys = not emulator
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
        metadata: dict[str, str], idempotency_key: str, confirm: bool = False,
    ) -> IntentState:
        """Create a manual-capture card intent, and with ``confirm`` authorize it in the
        same request (one call instead of create, confirm and the reads between).

        localstripe's create-and-confirm skips its decline simulation, so against the
        emulator a confirming create is sent as create, then confirm (same keys' scheme).
        """
        one_call = confirm and not self._emulator
        params: PaymentIntentCreateParams = {
            "amount": amount,
            "currency": currency.lower(),
            "payment_method": payment_method,
            "capture_method": "manual",
            "confirm": one_call,
            "metadata": metadata,
        }
        if not self._emulator:
            params["automatic_payment_methods"] = {"enabled": True, "allow_redirects": "never"}
        with _translated():
            intent = self._intents.create(
                params=params, options={"idempotency_key": idempotency_key})
        if confirm and not one_call:
            try:
                return self.confirm(intent.id, idempotency_key=f"{idempotency_key}:confirm")
            except PaymentDeclined as declined:
                declined.reference = declined.reference or intent.id
                raise
        return _state(intent)

    def retrieve(self, reference: str) -> IntentState:
        """The intent as Stripe sees it now, with its latest charge's amounts."""
        with _translated():
            return _state(self._intents.retrieve(
                reference, params={"expand": ["latest_charge"]}))

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

    def refund(self, reference: str, *, amount: int, idempotency_key: str) -> RefundState:
        """Give back ``amount`` of a captured intent."""
        with _translated():
            refund = self._client.v1.refunds.create(
                params={"payment_intent": reference, "amount": amount},
                options={"idempotency_key": idempotency_key})
        return RefundState(reference=refund.id, amount=int(refund.amount),
                           status=str(refund.status))

    def list_intents(self, *, created_after: int) -> Iterator[IntentState]:
        """Intents created after ``created_after``, newest first, page by page.

        localstripe cannot filter by ``created``; it is sent only to real Stripe,
        and the emulator's pages are filtered here.
        """
        params: dict[str, Any] = {"limit": 100}
        if not self._emulator:
            params["created"] = {"gt": created_after}
        while True:
            with _translated():
                page = self._intents.list(params=params)  # type: ignore[arg-type]
            for intent in page.data:
                if int(intent.created) > created_after:
                    yield _state(intent)
            if not page.has_more or not page.data:
                return
            params["starting_after"] = page.data[-1].id

    def close(self) -> None:
        """Close this thread's pooled HTTP connections."""
        self._http.close()  # type: ignore[no-untyped-call]
