"""The payment provider boundary: one interface, the Stripe implementation, errors.

This is the only module that imports ``stripe``. Provider errors become ours here::

    PaymentError
    ├── PaymentDeclined          the customer's card said no (reason: card_declined, …)
    ├── PaymentActionRequired    never raised; shown as IntentState.status
    ├── PaymentTransientError    network, timeouts, 5xx, 429, lock timeouts: retry
    └── PaymentProviderError     anything else the provider refused: do not retry
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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
