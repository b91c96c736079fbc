"""A gateway around another one: every call goes through ``around``, which faults,
budget and metering override (``faults.py``, ``budget.py``, ``metered.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from shop.payments.gateway import IntentState, PaymentGateway, RefundState

T = TypeVar("T")


class WrappedGateway:
    def __init__(self, inner: PaymentGateway) -> None:
        self.inner = inner
        self.name = inner.name
        self.honours_keys: bool = getattr(inner, "honours_keys", True)

    def around(self, op: str, call: Callable[[], T], key: str | None = None) -> T:
        """Make ``call``, the operation ``op`` (``key``: its idempotency key, if any)."""
        return call()

    def create_intent(self, *, amount: int, currency: str, payment_method: str,
                      metadata: dict[str, str], idempotency_key: str,
                      confirm: bool = False) -> IntentState:
        return self.around("create_intent", lambda: self.inner.create_intent(
            amount=amount, currency=currency, payment_method=payment_method,
            metadata=metadata, idempotency_key=idempotency_key, confirm=confirm),
            key=idempotency_key)

    def retrieve(self, reference: str) -> IntentState:
        return self.around("retrieve", lambda: self.inner.retrieve(reference))

    def confirm(self, reference: str, *, idempotency_key: str) -> IntentState:
        return self.around("confirm", lambda: self.inner.confirm(
            reference, idempotency_key=idempotency_key), key=idempotency_key)

    def capture(self, reference: str, *, amount: int, idempotency_key: str) -> IntentState:
        return self.around("capture", lambda: self.inner.capture(
            reference, amount=amount, idempotency_key=idempotency_key), key=idempotency_key)

    def cancel(self, reference: str, *, idempotency_key: str) -> IntentState:
        return self.around("cancel", lambda: self.inner.cancel(
            reference, idempotency_key=idempotency_key), key=idempotency_key)

    def refund(self, reference: str, *, amount: int, idempotency_key: str) -> RefundState:
        return self.around("refund", lambda: self.inner.refund(
            reference, amount=amount, idempotency_key=idempotency_key), key=idempotency_key)

    def list_intents(self, *, created_after: int) -> Iterator[IntentState]:
        return self.around("list_intents", lambda: iter(list(
            self.inner.list_intents(created_after=created_after))))
