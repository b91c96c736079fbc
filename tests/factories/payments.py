"""Payment attempts and the provider's webhook events."""

from __future__ import annotations

import factory

from shop.db import utcnow
from shop.payments.models import Payment, PaymentStatus, WebhookEvent
from tests.factories import ModelFactory
from tests.factories.orders import OrderFactory


class PaymentFactory(ModelFactory):
    """An order's payment attempt as the charge step first writes it: no intent yet."""

    class Meta:
        model = Payment
        exclude = ("order",)

    order = factory.SubFactory(OrderFactory)
    order_id = factory.SelfAttribute("order.id")
    attempt = factory.SelfAttribute("order.payment_attempt")
    provider = "dummy"
    idempotency_key = factory.LazyAttribute(lambda payment: f"{payment.order_id}:{payment.attempt}")
    reference = None
    amount = factory.SelfAttribute("order.total")
    currency = factory.SelfAttribute("order.currency")
    status = PaymentStatus.CREATED
    created_at = factory.LazyFunction(utcnow)
    updated_at = factory.SelfAttribute("created_at")


class WebhookEventFactory(ModelFactory):
    """A verified provider event, not yet processed."""

    class Meta:
        model = WebhookEvent

    id = factory.Sequence(lambda n: f"evt_test_{n:06d}")
    type = "payment_intent.succeeded"
    payload = factory.LazyAttribute(lambda event: {
        "id": event.id, "object": "event", "type": event.type,
        "data": {"object": {"object": "payment_intent"}},
    })
    received_at = factory.LazyFunction(utcnow)
    processed_at = None
