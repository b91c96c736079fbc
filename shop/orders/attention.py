"""What needs a person: open items on an order, kept until someone (or a job) resolves them.

A flag is an upsert on ``(order, kind)``, so concurrent flaggers never collide, and
it joins the caller's transaction (no commit here).
"""

from __future__ import annotations

import uuid
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shop.db import insert_for, utcnow
from shop.orders.models import Attention, Order


class Kind(StrEnum):
    PAYMENT_UNKNOWN = "payment_unknown"  # a capture's outcome is not known yet
    RELEASE_FAILED = "release_failed"  # a void or refund has not gone through
    EMAIL_FAILED = "email_failed"  # the confirmation email failed for good
    FULFILLMENT_FAILED = "fulfillment_failed"  # the warehouse request failed for good
    REFUNDED_UNCONFIRMED = "refunded_unconfirmed"  # money taken for an unconfirmed order
    DISPUTE = "dispute"  # the customer disputed the charge
    UNRECOGNIZED_PAYMENT = "unrecognized_payment"  # money names the order; the shop did not take it
    PROVIDER_ERROR = "provider_error"  # the provider refuses to say anything of this payment
    LEDGER_MISMATCH = "ledger_mismatch"  # the shop's ledger and the provider disagree
    STOCK_MISMATCH = "stock_mismatch"  # the warehouse counted fewer units than are reserved
    REFUND_FAILED = "refund_failed"  # a line refund did not go through (or is unknown)


def flag(session: Session, *, order_id: uuid.UUID, kind: Kind, message: str) -> None:
    """Open (or reopen) ``kind`` on the order."""
    table = Attention.__table__
    statement = insert_for(session, table).values(  # type: ignore[arg-type]
        order_id=order_id, kind=kind.value, message=message[:2000], created_at=utcnow())
    session.execute(statement.on_conflict_do_update(  # type: ignore[attr-defined]
        index_elements=["order_id", "kind"],
        set_={"message": statement.excluded.message, "resolved_at": None}))  # type: ignore[attr-defined]


def resolve(session: Session, *, order_id: uuid.UUID, kind: Kind, order: Order | None = None,
            why: str | None = None, actor: str | None = None) -> bool:
    """Close ``kind`` on the order; True if it was open.

    Closed by a person (``actor``) or by itself when its cause is gone (``why``); the
    order's timeline says which, when the caller has the order at hand.
    """
    done = session.execute(
        update(Attention)
        .where(Attention.order_id == order_id, Attention.kind == kind.value,
               Attention.resolved_at.is_(None))
        .values(resolved_at=utcnow()))
    resolved = bool(done.rowcount)  # type: ignore[attr-defined]
    if resolved and order is not None:
        order.record("attention.resolved", actor=actor, detail={
            "kind": kind.value, "by": actor or "the shop", "why": why or "resolved by an admin"})
    return resolved


def open_items(session: Session, *, order_id: uuid.UUID) -> list[Attention]:
    return list(session.scalars(
        select(Attention).where(Attention.order_id == order_id, Attention.resolved_at.is_(None))
        .order_by(Attention.created_at)))
