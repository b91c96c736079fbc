"""A payment provider that needs no server, shared by every process through files.

It takes Stripe's own test payment-method ids and behaves like Stripe's
PaymentIntents with manual capture: the same status names and moves, the same
idempotency-key replays, and errors from ``shop.payments.gateway``'s tree.

Each intent is one JSON file under ``state_dir``, replaced atomically under an
``fcntl`` lock, so the API, several workers and a retry after a crash all see
one state. An intent's id is derived from the create call's idempotency key.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shop.config import VAR_DIR
from shop.payments.currencies import amount_problem
from shop.payments.dummy_limits import DummyLimits
from shop.payments.gateway import (
    ENDPOINTS,
    IdempotencyMismatch,
    IntentState,
    IntentStatus,
    PaymentDeclined,
    PaymentProviderError,
    RefundState,
    decline_reason,
)

DEFAULT_STATE_DIR = VAR_DIR / "dummy_payments"

# Stripe test payment methods that decline at confirmation, with Stripe's decline code.
DECLINES: dict[str, str] = {
    "pm_card_chargeDeclined": "card_declined",
    "pm_card_visa_chargeDeclined": "generic_decline",
    "pm_card_chargeCustomerFail": "card_declined",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_chargeDeclinedExpiredCard": "expired_card",
    "pm_card_chargeDeclinedIncorrectCvc": "incorrect_cvc",
    "pm_card_chargeDeclinedFraudulent": "fraudulent",
    "pm_card_chargeDeclinedLostCard": "lost_card",
    "pm_card_chargeDeclinedStolenCard": "stolen_card",
    "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds": "insufficient_funds",
}
# Stripe test payment methods that need 3-D Secure before they can be charged.
NEEDS_AUTHENTICATION = frozenset({
    "pm_card_authenticationRequired",
    "pm_card_threeDSecure2Required",
    "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds",
})
MESSAGES: dict[str, str] = {
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "Your card's security code is incorrect.",
    "authentication_failed": "The provided PaymentMethod has failed authentication.",
}
Reply = dict[str, Any]


@dataclass
class _Intent:
    """What the dummy provider keeps of one PaymentIntent."""

    reference: str
    status: str
    amount: int
    currency: str
    payment_method: str | None
    metadata: dict[str, str]
    client_secret: str
    amount_received: int = 0
    amount_refunded: int = 0
    created: int = 0
    error_code: str | None = None
    error_message: str | None = None
    replies: dict[str, Reply] = field(default_factory=dict)

    def state(self) -> IntentState:
        failed = self.status in ("requires_payment_method", "canceled")
        return IntentState(
            reference=self.reference, status=IntentStatus(self.status), amount=self.amount,
            currency=self.currency, amount_received=self.amount_received,
            amount_refunded=self.amount_refunded,
            client_secret=self.client_secret,
            decline_code=self.error_code if failed else None,
            decline_message=self.error_message if failed else None,
            metadata=dict(self.metadata), created=self.created,
        )

    def fail(self, reason: str) -> PaymentDeclined:
        """Record a failed charge the way Stripe does; returns the error to raise."""
        self.status, self.payment_method = "requires_payment_method", None
        self.error_code = reason
        self.error_message = MESSAGES.get(reason, "Your card was declined.")
        return PaymentDeclined(reason, self.error_message, reference=self.reference)

    def charge(self) -> PaymentDeclined | None:
        """Authorize the amount on the card; a decline is recorded and returned."""
        code = DECLINES.get(self.payment_method or "")
        if code is not None:
            return self.fail(decline_reason(None, code))
        self.status = "requires_capture"
        return None


class _Store:
    """One JSON file per intent, each read and replaced under its own lock."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @contextmanager
    def locked(self, reference: str) -> Iterator[None]:
        if not _valid_reference(reference):
            raise PaymentProviderError(f"No such payment_intent: '{reference}'")
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / f"{reference}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def references(self) -> list[str]:
        return [path.stem for path in self.root.glob("pi_dummy_*.json")]

    def find(self, reference: str) -> _Intent | None:
        try:
            data = json.loads((self.root / f"{reference}.json").read_text())
        except FileNotFoundError:
            return None
        return _Intent(**data)

    def load(self, reference: str) -> _Intent:
        intent = self.find(reference)
        if intent is None:
            raise PaymentProviderError(f"No such payment_intent: '{reference}'")
        return intent

    def save(self, intent: _Intent) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{intent.reference}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(asdict(intent), out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.root / f"{intent.reference}.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _valid_reference(reference: str) -> bool:
    return reference.startswith("pi_dummy_") and reference[len("pi_dummy_"):].isalnum()


def intent_reference(idempotency_key: str) -> str:
    """The intent id a create call with this idempotency key gets."""
    return "pi_dummy_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]


def _replay(reply: Reply, request: dict[str, Any], *, replayed: bool) -> IntentState:
    """The stored answer of a keyed request, as Stripe replays it: the same body (a
    decline or a refusal included) for the same parameters, ``idempotency_error`` for
    other ones; a replay is marked as one (Stripe's ``Original-Request`` header)."""
    if reply["request"] != request:
        raise IdempotencyMismatch(
            "idempotency_error: Keys for idempotent requests can only be used with the same "
            "parameters they were first used with")
    if "declined" in reply:
        reason, message, *reference = reply["declined"]
        raise PaymentDeclined(reason, message, reference=reference[0] if reference else None)
    if "refused" in reply:
        raise PaymentProviderError(reply["refused"])
    state = dict(reply["state"])
    state.pop("replayed", None)
    return IntentState(**{**state, "status": IntentStatus(state["status"])},
                       replayed=replayed)


def _record(intent: _Intent, request: dict[str, Any], declined: PaymentDeclined | None,
            refused: PaymentProviderError | None = None) -> Reply:
    if refused is not None:
        return {"request": request, "refused": str(refused)}
    if declined is not None:
        return {"request": request,
                "declined": [declined.reason, declined.message, intent.reference]}
    return {"request": request, "state": asdict(intent.state())}


class DummyGateway:
    """Stripe-like PaymentIntents kept in files under ``state_dir``."""

    name = "dummy"

    def __init__(self, *, state_dir: Path = DEFAULT_STATE_DIR, latency_ms: int = 0,
                 limits: tuple[float, float] | None = None) -> None:
        self._store = _Store(state_dir)
        self._latency = latency_ms / 1000
        self.limits = None if limits is None else DummyLimits(
            state_dir, account_rps=limits[0], endpoint_rps=limits[1])

    def create_intent(
        self, *, amount: int, currency: str, payment_method: str,
        metadata: dict[str, str], idempotency_key: str, confirm: bool = False,
    ) -> IntentState:
        """Create a manual-capture intent, authorized in the same call with ``confirm``;
        the same key gives the same answer (a decline included), marked as a replay."""
        self._pause(ENDPOINTS["create_intent"])
        if not payment_method.startswith("pm_"):
            raise PaymentProviderError(f"No such PaymentMethod: '{payment_method}'")
        problem = amount_problem(amount, currency.upper())
        if problem is not None:
            raise PaymentProviderError(f"Invalid amount {amount} {currency}: {problem}")
        reference = intent_reference(idempotency_key)
        request = {"op": "create", "amount": amount, "currency": currency.lower(),
                   "payment_method": payment_method, "metadata": dict(metadata),
                   "confirm": confirm}
        with self._store.locked(reference):
            intent = self._store.find(reference)
            if intent is None:
                secret = hashlib.sha256(f"secret:{idempotency_key}".encode()).hexdigest()[:24]
                intent = _Intent(
                    reference=reference, status="requires_confirmation", amount=amount,
                    currency=currency.lower(), payment_method=payment_method,
                    metadata=dict(metadata), client_secret=f"{reference}_secret_{secret}",
                    created=int(time.time()))
                declined = _confirm(intent) if confirm else None
                intent.replies[idempotency_key] = _record(intent, request, declined)
                self._store.save(intent)
                return _replay(intent.replies[idempotency_key], request, replayed=False)
            return _replay(intent.replies[idempotency_key], request, replayed=True)

    def retrieve(self, reference: str) -> IntentState:
        """The intent as it is now."""
        self._pause(ENDPOINTS["retrieve"])
        with self._store.locked(reference):
            return self._store.load(reference).state()

    def confirm(self, reference: str, *, idempotency_key: str) -> IntentState:
        """Authorize; raises PaymentDeclined on a decline."""
        return self._write(reference, idempotency_key, {"op": "confirm"}, _confirm)

    def capture(self, reference: str, *, amount: int, idempotency_key: str) -> IntentState:
        """Take ``amount`` (at most the authorized amount) of an authorized intent."""
        return self._write(reference, idempotency_key, {"op": "capture", "amount": amount},
                           lambda intent: _capture(intent, amount))

    def cancel(self, reference: str, *, idempotency_key: str) -> IntentState:
        """Release an intent that has not been captured."""
        return self._write(reference, idempotency_key, {"op": "cancel"}, _cancel)

    def refund(self, reference: str, *, amount: int, idempotency_key: str) -> RefundState:
        """Give back ``amount`` of a captured intent; the same key gives the same refund."""
        self._write(reference, idempotency_key, {"op": "refund", "amount": amount},
                    lambda intent: _refund(intent, amount))
        refund_id = "re_dummy_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]
        return RefundState(reference=refund_id, amount=amount, status="succeeded")

    def list_intents(self, *, created_after: int) -> Iterator[IntentState]:
        """Every intent created after ``created_after``."""
        for reference in self._store.references():
            intent = self._store.find(reference)
            if intent is not None and intent.created > created_after:
                yield intent.state()

    def complete_authentication(self, reference: str, *, success: bool) -> IntentState:
        """Test helper: the customer passes (or fails) 3-D Secure on a requires_action intent."""
        with self._store.locked(reference):
            intent = self._store.load(reference)
            _expect(intent, "requires_action", "authenticate")
            if success:
                intent.charge()
            else:
                intent.fail("authentication_failed")
            self._store.save(intent)
            return intent.state()

    def _write(self, reference: str, key: str, request: dict[str, Any],
               apply: Callable[[_Intent], PaymentDeclined | None]) -> IntentState:
        """Apply one keyed write once; the same key later replays the first reply."""
        self._pause(ENDPOINTS.get(str(request["op"]), str(request["op"])))
        with self._store.locked(reference):
            intent = self._store.load(reference)
            if key in intent.replies:
                return _replay(intent.replies[key], request, replayed=True)
            try:
                declined = apply(intent)
            except PaymentProviderError as refused:  # nothing changed; the answer is kept
                intent = self._store.load(reference)
                intent.replies[key] = _record(intent, request, None, refused)
                self._store.save(intent)
                raise
            intent.replies[key] = _record(intent, request, declined)
            self._store.save(intent)
            return _replay(intent.replies[key], request, replayed=False)

    def _pause(self, endpoint: str = "other") -> None:
        """Each request: counted against the limits (a 429 past them), then its latency."""
        if self.limits is not None:
            self.limits.admit(endpoint)
        if self._latency > 0:
            time.sleep(self._latency)


def _expect(intent: _Intent, status: str | tuple[str, ...], action: str) -> None:
    allowed = (status,) if isinstance(status, str) else status
    if intent.status not in allowed:
        raise PaymentProviderError(
            f"You cannot {action} this PaymentIntent because it has a status of {intent.status}.")


def _confirm(intent: _Intent) -> PaymentDeclined | None:
    _expect(intent, "requires_confirmation", "confirm")
    if intent.payment_method in NEEDS_AUTHENTICATION:
        intent.status = "requires_action"
        return None
    return intent.charge()


def _capture(intent: _Intent, amount: int) -> None:
    _expect(intent, "requires_capture", "capture")
    if not 0 < amount <= intent.amount:
        raise PaymentProviderError(
            f"amount_to_capture must be between 1 and the authorized {intent.amount}")
    intent.status, intent.amount_received = "succeeded", amount


def _cancel(intent: _Intent) -> None:
    _expect(intent, tuple(s.value for s in IntentStatus if s.cancellable), "cancel")
    intent.status = "canceled"


def _refund(intent: _Intent, amount: int) -> None:
    _expect(intent, "succeeded", "refund")
    if not 0 < amount <= intent.amount_received - intent.amount_refunded:
        raise PaymentProviderError(
            f"Refund amount ({amount}) is greater than the unrefunded amount on the charge")
    intent.amount_refunded += amount
