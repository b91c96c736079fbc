"""Test doubles that are not rows: a recording in-memory payment gateway for step
tests (the real gateways are tested against localstripe and in their own unit tests)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from shop.payments.gateway import (
    IdempotencyMismatch,
    IntentState,
    PaymentDeclined,
    PaymentError,
    PaymentProviderError,
    PaymentTransientError,
    RefundState,
)


@dataclass
class FakeGateway:
    name: str = "fake"
    intents: dict[str, IntentState] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    decline: set[str] = field(default_factory=set)
    fail_next: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)  # every call, replays too
    replies: dict[str, tuple[object, IntentState | PaymentError]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def _replayed(self, key: str, params: object) -> IntentState | None:
        """Stripe's idempotency: the same key and parameters give the first answer
        again (an error included); other parameters are an ``idempotency_error``."""
        if key not in self.replies:
            return None
        first, answer = self.replies[key]
        if first != params:
            raise IdempotencyMismatch(f"idempotency_error: key {key} used with other parameters")
        if isinstance(answer, PaymentError):
            raise answer
        return replace(answer, replayed=True)

    def _keep(self, key: str, params: object, answer: IntentState | PaymentError) -> None:
        self.replies[key] = (params, answer)

    def _maybe_fail(self, op: str) -> None:
        """``fail_next`` lists operations whose next call times out before reaching us;
        ``after_<op>`` makes the call happen and its answer get lost."""
        if self.fail_next and self.fail_next[0] == op:
            self.fail_next.pop(0)
            raise PaymentTransientError(f"{op} timed out")

    def create_intent(self, *, amount: int, currency: str, payment_method: str,
                      metadata: dict[str, str], idempotency_key: str,
                      confirm: bool = False) -> IntentState:
        self._maybe_fail("create")
        params = ("create", amount, currency, payment_method, dict(metadata), confirm)
        self.requests.append(("create", idempotency_key))
        replayed = self._replayed(idempotency_key, params)
        if replayed is not None:
            self._maybe_fail("after_create")
            return replayed
        ref = f"pi_fake_{next(self._ids)}"
        self.calls.append(("create", ref))
        self.intents[ref] = IntentState(reference=ref, status="requires_confirmation",
                                        amount=amount, currency=currency,
                                        metadata={**metadata})
        self.metadata[ref] = {**metadata, "pm": payment_method}
        if confirm:
            self.calls.append(("confirm", ref))
            try:
                answer: IntentState = self._authorize(ref)
            except PaymentDeclined as declined:
                self._keep(idempotency_key, params, declined)
                raise
            self._keep(idempotency_key, params, answer)
            self._maybe_fail("after_create")
            self._maybe_fail("after_confirm")  # the same moment, in the older two-call words
            return answer
        self._keep(idempotency_key, params, self.intents[ref])
        return self.intents[ref]

    def _authorize(self, reference: str) -> IntentState:
        state = self.intents[reference]
        if self.metadata[reference]["pm"] in self.decline:
            self.intents[reference] = replace(state, status="requires_payment_method")
            raise PaymentDeclined("card_declined", "Your card was declined.",
                                  reference=reference)
        self.intents[reference] = replace(state, status="requires_capture")
        return self.intents[reference]

    def retrieve(self, reference: str) -> IntentState:
        self._maybe_fail("retrieve")
        if reference not in self.intents:
            raise PaymentProviderError(f"no intent {reference}")
        return self.intents[reference]

    def confirm(self, reference: str, *, idempotency_key: str) -> IntentState:
        self._maybe_fail("confirm")
        self.calls.append(("confirm", reference))
        state = self.intents[reference]
        if state.status != "requires_confirmation":
            raise PaymentProviderError("intent is not awaiting confirmation")
        if self.metadata[reference]["pm"] in self.decline:
            self.intents[reference] = replace(state, status="requires_payment_method")
            raise PaymentDeclined("card_declined", "Your card was declined.")
        self.intents[reference] = replace(state, status="requires_capture")
        self._maybe_fail("after_confirm")
        return self.intents[reference]

    def capture(self, reference: str, *, amount: int, idempotency_key: str) -> IntentState:
        self._maybe_fail("capture")
        params = ("capture", reference, amount)
        self.requests.append(("capture", idempotency_key))
        replayed = self._replayed(idempotency_key, params)
        if replayed is not None:
            self._maybe_fail("after_capture")
            return replayed
        state = self.intents[reference]
        if state.status != "requires_capture":
            refused = PaymentProviderError("intent is not capturable")
            self._keep(idempotency_key, params, refused)
            raise refused
        self.calls.append(("capture", reference))  # what took effect (``requests``: all)
        self.intents[reference] = replace(state, status="succeeded", amount_received=amount)
        self._keep(idempotency_key, params, self.intents[reference])
        self._maybe_fail("after_capture")
        return self.intents[reference]

    def cancel(self, reference: str, *, idempotency_key: str) -> IntentState:
        self._maybe_fail("cancel")
        self.calls.append(("cancel", reference))
        state = self.intents[reference]
        if state.status in ("succeeded", "canceled"):
            raise PaymentProviderError("intent cannot be cancelled")
        self.intents[reference] = replace(state, status="canceled")
        return self.intents[reference]

    def refund(self, reference: str, *, amount: int, idempotency_key: str) -> RefundState:
        self._maybe_fail("refund")
        self.calls.append(("refund", reference))
        state = self.intents[reference]
        if state.status != "succeeded" or amount > state.amount_received - state.amount_refunded:
            raise PaymentProviderError("nothing to refund")
        self.intents[reference] = replace(state, amount_refunded=state.amount_refunded + amount)
        # one id per refund (as Stripe's): two line refunds of one intent differ by key
        suffix = f"_{abs(hash(idempotency_key)) % 10**8}" if ":refund:" in idempotency_key else ""
        return RefundState(reference=f"re_{reference}{suffix}", amount=amount,
                           status="succeeded")

    def list_intents(self, *, created_after: int) -> Iterator[IntentState]:
        return iter(list(self.intents.values()))

    def count(self, op: str) -> int:
        return sum(1 for name, _ in self.calls if name == op)
