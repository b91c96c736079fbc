"""The admin API's views of orders: what went wrong, what needs a person, what moved.

Read-only; a page of orders is built with one query per related table, not per order.
"""

from __future__ import annotations

import uuid
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from shop.notifications.models import Notification
from shop.orders.fulfillment.views import shipments_out, unfulfilled_out
from shop.orders.models import Attention, FulfillmentRequest, Order
from shop.orders.refunds.models import RefundRequest
from shop.orders.refunds.views import RefundOut
from shop.orders.schemas import (
    AdminEventOut,
    AdminFailureOut,
    AdminOrderDetail,
    AdminOrderOut,
    AttemptOut,
    AttentionOut,
    FulfillmentDetailOut,
    LedgerOut,
    LineOut,
    NotificationOut,
    PaymentOut,
    WebhookOut,
)
from shop.payments.models import Payment, PaymentStatus, WebhookEvent


def summary_views(session: Session, *, orders: list[Order]) -> list[AdminOrderOut]:
    ids = [order.id for order in orders]
    flags: dict[uuid.UUID, list[AttentionOut]] = defaultdict(list)
    for item in session.scalars(select(Attention).where(
            Attention.order_id.in_(ids), Attention.resolved_at.is_(None))
            .order_by(Attention.created_at)):
        flags[item.order_id].append(AttentionOut(kind=item.kind, message=item.message,
                                                 since=item.created_at))
    shipping: dict[uuid.UUID, str] = {
        row.order_id: row.status for row in session.execute(
            select(FulfillmentRequest.order_id, FulfillmentRequest.status)
            .where(FulfillmentRequest.order_id.in_(ids)))}
    latest: dict[uuid.UUID, Payment] = {}
    for payment in session.scalars(select(Payment).where(Payment.order_id.in_(ids))
                                   .order_by(Payment.attempt)):
        latest[payment.order_id] = payment
    return [_summary(order, flags[order.id], latest.get(order.id), shipping.get(order.id))
            for order in orders]


def _summary(order: Order, flags: list[AttentionOut], payment: Payment | None,
             fulfillment: str | None) -> AdminOrderOut:
    failure = None
    if order.failure_step and order.failure_reason:
        failure = AdminFailureOut(step=order.failure_step, reason=order.failure_reason,
                                  message=order.failure_message or "",
                                  detail=order.failure_detail)
    return AdminOrderOut(
        id=order.id, status=order.status, stage=order.stage, email=order.email,
        name=order.name, currency=order.currency, total=order.total,
        created_at=order.created_at, updated_at=order.updated_at, failure=failure,
        attention=flags, fulfillment_status=fulfillment,
        payment=None if payment is None else PaymentOut(
            status=PaymentStatus(payment.status).public, provider=payment.provider,
            reference=payment.reference, amount_captured=payment.amount_captured or None,
            amount_refunded=payment.amount_refunded or None),
    )


def detail_view(session: Session, *, order: Order) -> AdminOrderDetail:
    [summary] = summary_views(session, orders=[order])
    attempts = list(session.scalars(select(Payment).where(Payment.order_id == order.id)
                                    .order_by(Payment.attempt)))
    notes = session.scalars(select(Notification).where(Notification.order_id == order.id)
                            .order_by(Notification.created_at))
    request = session.scalar(select(FulfillmentRequest).where(
        FulfillmentRequest.order_id == order.id))
    events = session.scalars(select(WebhookEvent).where(WebhookEvent.order_id == order.id)
                             .order_by(WebhookEvent.received_at))
    return AdminOrderDetail(
        **summary.model_dump(),
        lines=[LineOut(sku=x.sku, name=x.name, quantity=x.quantity, unit_price=x.unit_price,
                       line_total=x.line_total) for x in order.lines],
        shipping_address=order.shipping_address,
        events=[AdminEventOut(at=e.at, type=e.type, detail=e.detail, internal=e.internal,
                              actor=e.actor) for e in order.events],
        attempts=[AttemptOut(
            attempt=p.attempt, provider=p.provider, reference=p.reference,
            status=PaymentStatus(p.status).public, amount=p.amount,
            amount_captured=p.amount_captured, amount_refunded=p.amount_refunded,
            decline_code=p.decline_code, last_error=p.last_error, created_at=p.created_at)
            for p in attempts],
        ledger=[ledger_line(p) for p in attempts],
        notifications=[NotificationOut(kind=n.kind, status=n.status, attempts=n.attempts,
                                       message_id=n.message_id, sent_at=n.sent_at,
                                       last_error=n.last_error) for n in notes],
        fulfillment=None if request is None else FulfillmentDetailOut(
            message_id=request.id, status=request.status, created_at=request.created_at,
            shipments=shipments_out(session, order_id=order.id),
            unfulfilled=unfulfilled_out(session, order_id=order.id)),
        webhooks=[WebhookOut(id=w.id, type=w.type, outcome=w.outcome,
                             received_at=w.received_at) for w in events],
        refunds=[RefundOut.of(r) for r in session.scalars(
            select(RefundRequest).where(RefundRequest.order_id == order.id)
            .order_by(RefundRequest.created_at))],
    )


AUTHORIZED_AT_SOME_POINT = frozenset({
    PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURED, PaymentStatus.REFUNDED,
    PaymentStatus.PARTIALLY_REFUNDED})


def ledger_line(payment: Payment) -> LedgerOut:
    """One attempt's money: what was held, taken, given back and disputed."""
    status = PaymentStatus(payment.status)
    authorized = payment.amount if status in AUTHORIZED_AT_SOME_POINT or (
        status is PaymentStatus.VOIDED and payment.decline_code is None) else 0
    return LedgerOut(
        attempt=payment.attempt, reference=payment.reference, currency=payment.currency,
        authorized=authorized, captured=payment.amount_captured,
        refunded=payment.amount_refunded, disputed=payment.amount_disputed,
        held=payment.amount if status is PaymentStatus.AUTHORIZED else 0,
        verified_at=payment.verified_at)
