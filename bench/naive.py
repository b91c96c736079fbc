"""Case 2, the seed-style baseline: what a Celery tutorial has users write.

One ``process_order`` task checks stock, charges (the same dummy provider) and reserves
with plain reads and writes on the shop's own models, commits, then ``.delay()``s the
confirmation email and the fulfillment message. No outbox, no idempotency, no locking,
no leases, no timeline, no delivery counts: a duplicate delivery charges twice and a
crash between commit and ``.delay()`` loses the email. It runs on the shop's queues with
the shop's reliability settings (acks_late, prefetch 1, publisher confirms), so the
difference from case 3 is the safety, not the broker settings.

    celery -A bench.naive worker -c 2 -Q orders,payments,notifications

Orders come in over HTTP through ``bench.app`` (``POST /bench/naive-orders``), which
writes the order and its line and ``.delay()``s ``process_order``.
"""

from __future__ import annotations

import uuid
from email.message import EmailMessage
from functools import lru_cache

from celery import Celery
from kombu import Producer

from bench.ceiling import report
from shop.celery import configure
from shop.config import get_settings
from shop.db import session_scope
from shop.messaging.broker import EVENTS, FULFILLMENT_ROUTING_KEY
from shop.notifications.mailer import Mailer, build_mailer
from shop.orders.models import Order, Product
from shop.payments.gateway import PaymentGateway
from shop.payments.providers import build_gateway

app = Celery("naive")
configure(app, get_settings())


@lru_cache(maxsize=1)
def gateway() -> PaymentGateway:
    return build_gateway(get_settings())


@lru_cache(maxsize=1)
def mailer() -> Mailer:
    return build_mailer(get_settings())


@app.task(name="naive.process_order", queue="orders", acks_late=True, ignore_result=True)
def process_order(order_id: str) -> None:
    with session_scope() as session:
        order = session.get(Order, uuid.UUID(order_id))
        assert order is not None
        for line in order.lines:
            if line.product.available < line.quantity:
                order.status = order.stage = "failed"
                session.commit()
                return
        key = f"{order.id}:1"
        intent = gateway().create_intent(
            amount=order.total, currency=order.currency, payment_method=order.payment_method,
            metadata={"order_id": order_id}, idempotency_key=f"{key}:create")
        gateway().confirm(intent.reference, idempotency_key=f"{key}:confirm")
        gateway().capture(intent.reference, amount=order.total, idempotency_key=f"{key}:capture")
        for line in order.lines:
            product = session.get(Product, line.sku)
            assert product is not None
            product.reserved += line.quantity
        order.status = order.stage = "confirmed"
        session.commit()
    send_confirmation.delay(order_id)
    request_fulfillment.delay(order_id)


@app.task(name="naive.send_confirmation", queue="notifications", acks_late=True,
          ignore_result=True)
def send_confirmation(order_id: str) -> None:
    with session_scope() as session:
        order = session.get(Order, uuid.UUID(order_id))
        assert order is not None
        message = EmailMessage()
        message["From"], message["To"] = get_settings().mail_from, order.email
        message["Subject"] = f"Order {order.id} confirmed"
        message.set_content(f"Thank you, {order.name}. Total: {order.total} {order.currency}")
    mailer().send(message)
    report("confirm", order_id)


@app.task(name="naive.request_fulfillment", queue="orders", acks_late=True,
          ignore_result=True)
def request_fulfillment(order_id: str) -> None:
    with session_scope() as session:
        order = session.get(Order, uuid.UUID(order_id))
        assert order is not None
        body = {"order_id": order_id, "lines": [
            {"sku": x.sku, "quantity": x.quantity} for x in order.lines],
            "shipping_address": order.shipping_address}
    with app.producer_or_acquire() as producer:
        publish(producer, body)
    report("fulfill", order_id)


def publish(producer: Producer, body: dict[str, object]) -> None:
    producer.publish(body, exchange=EVENTS, routing_key=FULFILLMENT_ROUTING_KEY,
                     serializer="json", declare=[EVENTS], retry=True)

