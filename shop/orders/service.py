"""Storefront and catalogue use cases. Each commits its own single transaction."""

from __future__ import annotations

import hashlib
import json
import uuid

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shop import metrics
from shop.db import insert_for, utcnow
from shop.orders import flow as workflow
from shop.orders import queries
from shop.orders.fulfillment.views import fulfillment_of
from shop.orders.models import IdempotencyKey, Order, OrderLine, Product
from shop.orders.schemas import (
    EventOut,
    FailureOut,
    LineOut,
    OrderIn,
    OrderOut,
    PaymentOut,
    ProductIn,
    ProductOut,
)
from shop.orders.states import Stage
from shop.payments import service as payments
from shop.payments.currencies import amount_problem
from shop.payments.models import PaymentStatus
from shop.web.errors import FieldProblem, InvalidRequest


class IdempotencyConflict(InvalidRequest):
    """The Idempotency-Key was used before with a different body."""


def request_hash(data: OrderIn) -> str:
    """A fingerprint of the checkout body, independent of key order and whitespace."""
    canonical = json.dumps(data.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def place_order(session: Session, *, data: OrderIn,
                idempotency_key: str | None) -> tuple[Order, bool]:
    """Write the order, its lines, its first event and its workflow message in one commit;
    returns the order and whether this call created it.

    A repeated ``idempotency_key`` returns the order it created before. The primary key
    on ``idempotency_keys`` decides, not a read-then-write: the first checkout reads
    nothing extra, and a repeat finds its order when its own insert is refused.
    """
    fingerprint = request_hash(data)
    try:
        order = _build_order(session, data=data)
    except InvalidRequest:  # the catalogue may have changed since the first checkout
        existing = _replay(session, key=idempotency_key, fingerprint=fingerprint)
        if existing is None:
            raise
        return existing, False
    session.add(order)
    if idempotency_key is not None:
        session.flush()  # the key refers to the order: the order's row goes first
        session.add(IdempotencyKey(key=idempotency_key, request_hash=fingerprint,
                                   order_id=order.id))
    workflow.start(session, order=order)
    metrics.on_commit(session, metrics.ORDERS_PLACED.inc)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = _replay(session, key=idempotency_key, fingerprint=fingerprint)
        if existing is None:
            raise
        return existing, False
    return order, True


def _replay(session: Session, *, key: str | None, fingerprint: str) -> Order | None:
    if key is None:
        return None
    record = session.get(IdempotencyKey, key)
    if record is None:
        return None
    if record.request_hash != fingerprint:
        raise IdempotencyConflict([FieldProblem(
            "Idempotency-Key", "this key was already used with a different request body",
            "idempotency_key_reused")])
    return queries.require(session, order_id=record.order_id, lines=True, events=True)


def _build_order(session: Session, *, data: OrderIn) -> Order:
    skus = [line.sku for line in data.lines]
    products = {p.sku: p for p in session.scalars(select(Product).where(Product.sku.in_(skus)))}
    problems = [
        FieldProblem(f"lines[{i}].sku", f"unknown SKU {line.sku!r}", "unknown_sku")
        for i, line in enumerate(data.lines) if line.sku not in products
    ]
    if problems:
        raise InvalidRequest(problems)
    currency = products[skus[0]].currency
    problems = [
        FieldProblem(f"lines[{i}].sku",
                     f"{line.sku!r} is priced in {products[line.sku].currency}, not {currency}",
                     "currency_mismatch")
        for i, line in enumerate(data.lines) if products[line.sku].currency != currency
    ]
    if problems:
        raise InvalidRequest(problems)
    lines = [
        OrderLine(sku=line.sku, name=products[line.sku].name, quantity=line.quantity,
                  unit_price=products[line.sku].price,
                  line_total=products[line.sku].price * line.quantity)
        for line in data.lines
    ]
    subtotal = sum(line.line_total for line in lines)
    problem = amount_problem(subtotal, currency)
    if problem is not None:
        raise InvalidRequest([FieldProblem("lines", f"the order total {subtotal} {currency} is "
                                                    f"{problem}", "amount_out_of_range")])
    now = utcnow()
    order = Order(
        id=uuid.uuid4(), stage=Stage.PLACED, status=Stage.PLACED.status, payment_attempt=1,
        email=str(data.email), name=data.name, currency=currency,
        subtotal=subtotal, total=subtotal, payment_method=data.payment_method,
        shipping_address=data.shipping_address.model_dump(exclude_none=True),
        lines=lines, created_at=now, updated_at=now,
    )
    order.record("order.placed", detail={"lines": len(lines), "total": subtotal}, at=now)
    return order


def order_view(session: Session, *, order: Order, new: bool = False) -> OrderOut:
    """The contract's JSON shape of an order (``new``: just placed, nothing to look up)."""
    payment = None if new else payments.latest_attempt(session, order_id=order.id)
    fulfillment = None if new else fulfillment_of(session, order_id=order.id)
    failure = None
    if order.failure_step and order.failure_reason:
        failure = FailureOut(step=order.failure_step, reason=order.failure_reason,
                             message=order.failure_message or "")
    return OrderOut(
        id=order.id, status=order.status, email=order.email, name=order.name,
        currency=order.currency, subtotal=order.subtotal, total=order.total,
        lines=[LineOut(sku=x.sku, name=x.name, quantity=x.quantity, unit_price=x.unit_price,
                       line_total=x.line_total) for x in order.lines],
        payment=None if payment is None else PaymentOut(
            status=PaymentStatus(payment.status).public, provider=payment.provider,
            reference=payment.reference,
            client_secret=payment.client_secret if order.status == "requires_action" else None,
            amount_captured=payment.amount_captured or None,
            amount_refunded=payment.amount_refunded or None),
        failure=failure,
        fulfillment=fulfillment,
        events=[EventOut(at=e.at, type=e.type, detail=e.detail) for e in order.events],
        created_at=order.created_at, updated_at=order.updated_at,
    )


def list_products(session: Session) -> list[ProductOut]:
    """The catalogue with what can still be sold."""
    return [
        ProductOut(sku=p.sku, name=p.name, price=p.price, currency=p.currency,
                   available=p.available)
        for p in session.scalars(select(Product).order_by(Product.sku))
    ]


def put_product(session: Session, *, sku: str, data: ProductIn) -> tuple[ProductOut, bool]:
    """Create or update a product; returns it and whether it was created.

    An upsert: two concurrent first PUTs of one SKU both succeed (one creates, the
    other updates), instead of the second hitting the primary key.
    """
    now = utcnow()
    values = {"name": data.name, "price": data.price, "currency": data.currency,
              "on_hand": data.stock, "updated_at": now}
    created = session.execute(
        insert_for(session, Product.__table__)  # type: ignore[arg-type]
        .values(sku=sku, reserved=0, created_at=now, **values)
        .on_conflict_do_nothing(index_elements=["sku"])  # type: ignore[attr-defined]
        .returning(Product.sku)).scalar() is not None
    if not created:
        updated = session.execute(
            update(Product).where(Product.sku == sku, Product.reserved <= data.stock)
            .values(**values).returning(Product.sku)).scalar()
        if updated is None:
            reserved = session.scalar(select(Product.reserved).where(Product.sku == sku))
            session.rollback()
            raise InvalidRequest([FieldProblem(
                "stock", f"{reserved} units are reserved by orders; stock cannot go below",
                "below_reserved")])
    product = session.scalars(select(Product).where(Product.sku == sku)
                              .execution_options(populate_existing=True)).one()
    session.commit()
    return ProductOut(sku=sku, name=product.name, price=product.price,
                      currency=product.currency, available=product.available), created
