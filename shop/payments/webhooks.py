"""Provider webhook events: recorded once by their id, and read for the payment they
concern.

Verification is ``gateway.verify_event`` (the SDK's ``verify_header``); the payload kept
is the signed JSON as sent, never the SDK's objects, whose ``Decimal`` fields no JSON
column stores. Recording is an insert-once on the event id, in the caller's
transaction. Handling happens later, in a task, which asks the provider for the
PaymentIntent instead of trusting the payload or its order of arrival
(``shop.orders.provider.events``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shop.db import insert_for, utcnow
from shop.payments.gateway import ProviderEvent
from shop.payments.models import WebhookEvent


def record(session: Session, *, event: ProviderEvent) -> bool:
    """Record ``event`` unless its id was seen before; True if it is new (no commit)."""
    inserted = session.execute(
        insert_for(session, WebhookEvent.__table__)  # type: ignore[arg-type]
        .values(id=event.id, type=event.type[:100], payload=event.payload,
                received_at=utcnow())
        .on_conflict_do_nothing(index_elements=["id"])  # type: ignore[attr-defined]
        .returning(WebhookEvent.id))
    return inserted.scalar() is not None


def pending(session: Session, *, event_id: str) -> WebhookEvent | None:
    """The recorded event, unless it was handled already."""
    return session.scalar(select(WebhookEvent).where(WebhookEvent.id == event_id,
                                                     WebhookEvent.processed_at.is_(None)))


def mark_handled(session: Session, *, event_id: str, outcome: str,
                 order_id: uuid.UUID | None) -> None:
    """Note what the event did, in the caller's transaction."""
    session.execute(update(WebhookEvent).where(WebhookEvent.id == event_id).values(
        processed_at=utcnow(), outcome=outcome, order_id=order_id))


def mark_deferred(session: Session, *, event_id: str, reason: str) -> None:
    """Note that handling must be tried again later (the event stays unhandled)."""
    session.execute(update(WebhookEvent).where(WebhookEvent.id == event_id,
                                               WebhookEvent.processed_at.is_(None))
                    .values(outcome="deferred"))


def unhandled(session: Session, *, older_than: dt.datetime, limit: int) -> list[str]:
    """Ids of events still unhandled since before ``older_than``, oldest first."""
    return list(session.scalars(
        select(WebhookEvent.id).where(WebhookEvent.processed_at.is_(None),
                                      WebhookEvent.received_at < older_than)
        .order_by(WebhookEvent.received_at).limit(limit)))


def event_object(payload: dict[str, Any]) -> dict[str, Any]:
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    return obj if isinstance(obj, dict) else {}


def intent_reference(payload: dict[str, Any]) -> str | None:
    """The PaymentIntent an event is about (intents, charges, refunds and disputes)."""
    obj = event_object(payload)
    if obj.get("object") == "payment_intent":
        found = obj.get("id")
    else:
        found = obj.get("payment_intent")
        if isinstance(found, dict):
            found = found.get("id")
    return found if isinstance(found, str) and found.startswith("pi_") else None


def order_id_in(payload: dict[str, Any]) -> str | None:
    """``metadata.order_id`` of the event's object, when it carries one."""
    metadata = event_object(payload).get("metadata")
    found = metadata.get("order_id") if isinstance(metadata, dict) else None
    return found if isinstance(found, str) else None


def dispute_summary(payload: dict[str, Any]) -> dict[str, Any]:
    """What admins need of a dispute event: its id, status, reason and amount."""
    obj = event_object(payload)
    return {key: obj.get(key) for key in ("id", "status", "reason", "amount", "currency")}
