"""Line refunds: decided and reserved here, sent by a task through ``converge``.

The entry point for every door (admin API, page, CLI, the warehouse consumer)::

    request_line_refund(session, *, order_id: uuid.UUID, lines: Sequence[LineRequest],
                        reason: str, key: str, source: RefundSource,
                        actor: str | None = None) -> RefundRequest

- validates and records the request in the CALLER's transaction (no commit): the
  caller commits, and the provider call is queued through the outbox in that same
  transaction (task ``shop.orders.refund_lines``), so it leaves only if the request does;
- ``LineRequest(sku, quantity, restock)``: the amount is the server's, computed from the
  order's lines (unit price times quantity);
- idempotent on ``(order_id, key)``: the same key with the same lines, restock flags,
  reason and source gives back the same request (nothing new is written; a request
  that ended in ``needs_attention`` is queued once more, with its same provider key);
  the same key with different content raises ``RefundKeyReused``;
- reserves, with conditional updates under the order's row lock, the units of each line
  (``OrderLine.quantity_refunded``) and the amount (``Payment.amount_refund_pending``),
  so concurrent requests can never together exceed what was bought or captured and not
  yet refunded; past that, ``RefundInvalid`` naming the field (``lines[0].quantity``);
- ``OrderNotFound`` for an unknown order, ``NothingCaptured`` for an order whose
  current payment attempt took no money.

Errors::

    RefundError
    ├── RefundInvalid      a field is wrong, or asks past what remains (422)
    ├── RefundKeyReused    the key was used for a different refund (422)
    └── NothingCaptured    the order has no captured money (409)

The task then sends the request once (``converge.refund_lines``): provider key
``<order id>:<attempt>:refund:<request id>``; an unknown outcome is sent again with the
same key; success records the money, and puts the ``restock`` lines' units back on the
shelf in the same transaction, exactly once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shop.db import utcnow
from shop.messaging.service import enqueue_task
from shop.orders import attention
from shop.orders.models import Order, OrderLine, Product
from shop.orders.queries import OrderNotFound, load
from shop.orders.refunds.models import (
    RefundRequest,
    RefundRequestLine,
    RefundSource,
    RefundStatus,
)
from shop.orders.workflow.table import SPEC, TaskName
from shop.payments import service as payments
from shop.payments.models import Payment

__all__ = ["LineRequest", "NothingCaptured", "OrderNotFound", "RefundError", "RefundInvalid",
           "RefundKeyReused", "RefundSource", "request_line_refund"]

MAX_REASON = 500
KEY_LIFETIME = dt.timedelta(hours=23)  # under the provider's 24 h memory of a key


class RefundError(Exception):
    """A line refund that cannot be accepted."""


class RefundInvalid(RefundError):
    def __init__(self, field: str, message: str, code: str = "invalid") -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.code = field, message, code


class RefundKeyReused(RefundInvalid):
    def __init__(self) -> None:
        super().__init__("Idempotency-Key", "this key was used for a different refund of "
                         "this order", "idempotency_key_reused")


class NothingCaptured(RefundError):
    """The order's payment took no money: there is nothing to refund."""


@dataclass(frozen=True, slots=True)
class LineRequest:
    sku: str
    quantity: int
    restock: bool = False


def fingerprint(*, lines: Sequence[LineRequest], reason: str, source: RefundSource) -> str:
    """What was asked, hashed: the same lines (in any order), flags, reason and source."""
    body = {"lines": sorted([line.sku, line.quantity, line.restock] for line in lines),
            "reason": reason, "source": source.value}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def provider_key(request: RefundRequest, payment: Payment) -> str:
    """The provider's idempotency key of the request: derived from it, never random."""
    return f"{payment.idempotency_key}:refund:{request.id}"


def request_line_refund(
    session: Session, *, order_id: uuid.UUID, lines: Sequence[LineRequest], reason: str,
    key: str, source: RefundSource, actor: str | None = None,
) -> RefundRequest:
    """Record a refund of ``lines`` and queue its provider call (the caller commits)."""
    _check_shape(lines=lines, reason=reason, key=key)
    order = load(session, order_id=order_id, lock=True)  # one refund decision at a time
    if order is None:
        raise OrderNotFound(str(order_id))
    digest = fingerprint(lines=lines, reason=reason, source=source)
    existing = find_by_key(session, order_id=order_id, key=key)
    if existing is not None:
        return _repeated(session, request=existing, digest=digest)
    payment = payments.find_attempt(session, order_id=order_id, attempt=order.payment_attempt)
    if payment is None or payment.amount_captured <= 0:
        raise NothingCaptured(f"order {order_id} has no captured money to refund")
    request = RefundRequest(
        id=uuid.uuid4(), order_id=order_id, idempotency_key=key, fingerprint=digest,
        source=source.value, reason=reason, actor=actor, payment_attempt=payment.attempt,
        currency=order.currency, status=RefundStatus.PENDING, sends=0, amount=0)
    request.lines = _reserve_units(session, order=order, lines=lines)
    request.amount = sum(line.amount for line in request.lines)
    if request.amount <= 0:
        raise RefundInvalid("lines", "these lines cost nothing: there is no money to refund",
                            "nothing_to_refund")
    if not payments.reserve_refund(session, payment=payment, amount=request.amount):
        raise RefundInvalid(
            "lines", f"{request.amount} {order.currency} is more than what was captured and "
            f"not yet refunded ({payments.refundable(payment)} {order.currency})",
            "exceeds_captured")
    session.add(request)
    session.flush()
    order.record("refund.requested", actor=actor, detail={
        "refund_id": str(request.id), "amount": request.amount, "source": source.value,
        "lines": [{"sku": line.sku, "quantity": line.quantity, "restock": line.restock}
                  for line in request.lines]}, internal={"reason": reason})
    _send(session, request=request)
    return request


def _check_shape(*, lines: Sequence[LineRequest], reason: str, key: str) -> None:
    if not lines:
        raise RefundInvalid("lines", "name at least one line", "empty")
    seen: set[str] = set()
    for index, line in enumerate(lines):
        if not 1 <= line.quantity <= 1000:
            raise RefundInvalid(f"lines[{index}].quantity", "must be between 1 and 1000",
                                "out_of_range")
        if line.sku in seen:
            raise RefundInvalid(f"lines[{index}].sku", f"{line.sku} is named twice", "duplicate")
        seen.add(line.sku)
    if not reason.strip() or len(reason) > MAX_REASON:
        raise RefundInvalid("reason", f"say why, in 1 to {MAX_REASON} characters", "length")
    if not key or len(key) > 255:
        raise RefundInvalid("Idempotency-Key", "1 to 255 characters", "length")


def _repeated(session: Session, *, request: RefundRequest, digest: str) -> RefundRequest:
    if request.fingerprint != digest:
        raise RefundKeyReused()
    if request.status == RefundStatus.NEEDS_ATTENTION:  # asked again: one more try
        _send(session, request=request)
    return request


def _reserve_units(session: Session, *, order: Order,
                   lines: Sequence[LineRequest]) -> list[RefundRequestLine]:
    """Each line's units, reserved against what was bought and not yet refunded."""
    bought = {line.sku: line for line in session.scalars(
        select(OrderLine).where(OrderLine.order_id == order.id))}
    reserved = []
    for index, wanted in sorted(enumerate(lines), key=lambda pair: pair[1].sku):
        line = bought.get(wanted.sku)
        if line is None:
            raise RefundInvalid(f"lines[{index}].sku", f"the order has no line {wanted.sku!r}",
                                "unknown_line")
        done = session.execute(
            update(OrderLine)
            .where(OrderLine.id == line.id,
                   OrderLine.quantity - OrderLine.quantity_refunded >= wanted.quantity)
            .values(quantity_refunded=OrderLine.quantity_refunded + wanted.quantity)
            .execution_options(synchronize_session=False))
        if not done.rowcount:  # type: ignore[attr-defined]
            session.refresh(line)
            raise RefundInvalid(
                f"lines[{index}].quantity", f"only {line.quantity - line.quantity_refunded} "
                f"of {line.quantity} units of {wanted.sku} are left to refund", "exceeds_bought")
        reserved.append(RefundRequestLine(
            sku=wanted.sku, quantity=wanted.quantity, unit_price=line.unit_price,
            amount=line.unit_price * wanted.quantity, restock=wanted.restock, restocked=False))
    return reserved


def _send(session: Session, *, request: RefundRequest) -> None:
    enqueue_task(session, name=TaskName.REFUND_LINES, kwargs={"refund_id": str(request.id)})


def find_by_key(session: Session, *, order_id: uuid.UUID, key: str) -> RefundRequest | None:
    return session.scalar(select(RefundRequest).where(
        RefundRequest.order_id == order_id, RefundRequest.idempotency_key == key))


def get(session: Session, *, refund_id: uuid.UUID, lock: bool = False) -> RefundRequest | None:
    query = select(RefundRequest).where(RefundRequest.id == refund_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query.execution_options(populate_existing=True)).one_or_none()


def of_order(session: Session, *, order_id: uuid.UUID) -> list[RefundRequest]:
    return list(session.scalars(select(RefundRequest).where(RefundRequest.order_id == order_id)
                                .order_by(RefundRequest.created_at)))


def recent_duplicate(session: Session, *, order_id: uuid.UUID, digest: str,
                     within_seconds: float) -> RefundRequest | None:
    """The same refund asked on the same order within ``within_seconds`` (call it with
    the order's row locked, so a concurrent twin sees this one once it commits)."""
    load(session, order_id=order_id, lock=True)
    return session.scalar(select(RefundRequest).where(
        RefundRequest.order_id == order_id, RefundRequest.fingerprint == digest,
        RefundRequest.created_at >= utcnow() - dt.timedelta(seconds=within_seconds))
        .order_by(RefundRequest.created_at.desc()).limit(1))


# --- the task's side: sent, succeeded (restocked once), or left for a person ----------


def mark_sent(session: Session, *, request: RefundRequest) -> None:
    """The provider call is about to go out (the caller commits before it does)."""
    request.status = RefundStatus.SENT
    request.sends += 1


def mark_succeeded(session: Session, *, request: RefundRequest, order: Order,
                   reference: str) -> list[str]:
    """The provider refunded it: ``succeeded``, and its ``restock`` lines back on the
    shelf, once (the status is compared and set in one statement, in the caller's
    transaction with the money). The SKUs restocked."""
    done = session.execute(
        update(RefundRequest)
        .where(RefundRequest.id == request.id, RefundRequest.status != RefundStatus.SUCCEEDED)
        .values(status=RefundStatus.SUCCEEDED, provider_reference=reference, last_error=None,
                updated_at=utcnow())
        .execution_options(synchronize_session=False))
    if not done.rowcount:  # type: ignore[attr-defined]
        return []
    restocked = []
    for line in sorted(request.lines, key=lambda x: x.sku):
        if line.restock and not line.restocked:
            session.execute(update(Product).where(Product.sku == line.sku)
                            .values(on_hand=Product.on_hand + line.quantity))
            line.restocked = True
            restocked.append(line.sku)
    # Only what the statement wrote is read again: expiring the whole request would
    # cascade to its lines and drop their ``restocked`` before the flush.
    session.expire(request, ["status", "provider_reference", "last_error", "updated_at"])
    attention.resolve(session, order_id=order.id, kind=attention.Kind.REFUND_FAILED,
                      order=order, why="the refund went through")
    order.record("refund.succeeded", actor=request.actor, detail={
        "refund_id": str(request.id), "amount": request.amount, "restocked": restocked},
        internal={"reference": reference})
    return restocked


def mark_needs_attention(session: Session, *, request: RefundRequest, order: Order | None,
                         error: str) -> None:
    """It could not complete: on the admin's attention list (the caller commits). Its
    units and amount stay reserved until a person decides (the same key sends it again)."""
    if request.status == RefundStatus.SUCCEEDED:
        return
    request.status = RefundStatus.NEEDS_ATTENTION
    request.last_error = error[:2000]
    _flag(session, request=request, error=error)
    if order is not None:
        order.record("refund.needs_attention", actor=request.actor,
                     detail={"refund_id": str(request.id), "amount": request.amount},
                     internal={"error": error[:500]})


def give_up(session: Session, *, refund_id: uuid.UUID, error: Exception | str) -> None:
    """The task's attempts ran out: on the attention list. A request that was sent keeps
    ``sent`` (its outcome is unknown: reconciliation sends it again with the same key
    until the provider answers); one never sent is ``needs_attention``."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    request = get(session, refund_id=refund_id, lock=True)
    if request is None:
        return
    order = load(session, order_id=request.order_id)
    if request.status == RefundStatus.SENT:
        _flag(session, request=request, error=f"outcome unknown, asked again by "
                                               f"reconciliation: {text}")
        request.last_error = text[:2000]
        if order is not None:
            order.record("refund.outcome_unknown", actor=request.actor,
                         detail={"refund_id": str(request.id), "amount": request.amount},
                         internal={"error": text[:500]})
    else:
        mark_needs_attention(session, request=request, order=order, error=text)
    session.commit()


def _flag(session: Session, *, request: RefundRequest, error: str) -> None:
    flags = SPEC[TaskName.REFUND_LINES].flags
    kind, what = flags if flags is not None else (attention.Kind.REFUND_FAILED, "refund")
    attention.flag(session, order_id=request.order_id, kind=kind,
                   message=f"{what}: {request.amount} {request.currency.upper()} "
                           f"(refund {request.id}): {error}"[:500])


def unknown(session: Session, *, before: dt.datetime, limit: int) -> list[uuid.UUID]:
    """Requests sent whose outcome nobody recorded since ``before`` (for reconciliation)."""
    return list(session.scalars(
        select(RefundRequest.id).where(RefundRequest.status == RefundStatus.SENT,
                                       RefundRequest.updated_at < before)
        .order_by(RefundRequest.updated_at).limit(limit)))


def too_old_to_resend(request: RefundRequest) -> bool:
    """Whether sending it again could refund twice: the provider keeps an idempotency key
    for 24 hours (Stripe), so a request first sent longer ago is left to a person."""
    return request.sends > 0 and request.created_at < utcnow() - KEY_LIFETIME


# --- the admin's use case (API, page, CLI): one commit --------------------------------

DOUBLE_CLICK_SECONDS = 60.0


def refund_for_admin(
    session: Session, *, order_id: uuid.UUID, lines: Sequence[LineRequest], reason: str,
    key: str | None, actor: str,
) -> RefundRequest:
    """An admin's line refund, committed. With ``key`` (an ``Idempotency-Key``) a repeat
    gives the same refund back. Without one, the same lines, flags and reason on the same
    order within ``DOUBLE_CLICK_SECONDS`` are taken as a double click and give the first
    refund back (decided under the order's row lock, so concurrent twins see each other);
    a deliberate identical refund needs its own key, or a minute's wait."""
    try:
        if key is None:
            _check_shape(lines=lines, reason=reason, key="-")
            digest = fingerprint(lines=lines, reason=reason, source=RefundSource.ADMIN)
            twin = recent_duplicate(session, order_id=order_id, digest=digest,
                                    within_seconds=DOUBLE_CLICK_SECONDS)
            stored_key = f"auto:{uuid.uuid4()}" if twin is None else twin.idempotency_key
        else:
            stored_key = f"admin:{key}"
        request = request_line_refund(session, order_id=order_id, lines=lines, reason=reason,
                                      key=stored_key, source=RefundSource.ADMIN, actor=actor)
        request_id = request.id
        session.commit()
    except BaseException:
        session.rollback()
        raise
    found = get(session, refund_id=request_id)
    if found is None:
        raise OrderNotFound(str(order_id))
    return found
