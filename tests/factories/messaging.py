"""Outbox messages."""

from __future__ import annotations

import uuid

import factory

from shop.db import utcnow
from shop.messaging.models import OutboxMessage
from tests.factories import ModelFactory


class OutboxMessageFactory(ModelFactory):
    """A task message due now and not yet published."""

    class Meta:
        model = OutboxMessage

    id = factory.LazyFunction(uuid.uuid4)
    kind = "task"
    name = "shop.orders.check_inventory"
    exchange = None
    payload = factory.LazyFunction(lambda: {"order_id": str(uuid.uuid4())})
    created_at = factory.LazyFunction(utcnow)
    available_at = factory.SelfAttribute("created_at")
    published_at = None
    attempts = 0
    last_error = None
