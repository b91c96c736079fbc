"""The notification ledger."""

from __future__ import annotations

import factory

from shop.db import utcnow
from shop.notifications.models import Notification
from shop.notifications.service import message_id_for
from tests.factories import ModelFactory
from tests.factories.orders import OrderFactory


class NotificationFactory(ModelFactory):
    """An order's confirmation email, sent once."""

    class Meta:
        model = Notification
        exclude = ("order",)

    order = factory.SubFactory(OrderFactory)
    order_id = factory.SelfAttribute("order.id")
    kind = "order_confirmation"
    key = factory.LazyAttribute(lambda row: f"{row.kind}:{row.order_id}")
    recipients = factory.SelfAttribute("order.email")
    message_id = factory.LazyAttribute(lambda row: message_id_for(row.key))
    status = "sent"
    attempts = 1
    claimed_at = None
    created_at = factory.LazyFunction(utcnow)
    sent_at = factory.SelfAttribute("created_at")
