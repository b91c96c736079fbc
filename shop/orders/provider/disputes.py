"""Disputes on an order's charge, decided from the dispute's own state.

Each dispute event carries the dispute object as the provider holds it (its id and
``status``). An open status opens the order's ``dispute`` attention item, a closed
one (won, lost, warning_closed, charge_refunded) resolves it. A closed dispute never
reopens: Stripe's disputes do not, so an open-status event that arrives after its
``closed`` (a retry, a reordered delivery) changes nothing. Each event is applied
once: its id is written on the timeline entry it made, and a second look finds it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shop.orders import attention
from shop.orders.models import Order, OrderEvent

CLOSED = frozenset({"won", "lost", "warning_closed", "charge_refunded"})


def note(session: Session, *, order: Order, event_id: str, dispute: dict[str, Any]) -> str:
    """Apply one dispute event to the order (the caller commits); returns what it did."""
    seen = list(session.scalars(select(OrderEvent).where(
        OrderEvent.order_id == order.id, OrderEvent.type.in_(("dispute.created",
                                                              "dispute.closed",
                                                              "dispute.updated")))))
    if any((entry.internal or {}).get("event_id") == event_id for entry in seen):
        return "already_applied"
    dispute_id = dispute.get("id")
    closed_before = any(entry.type == "dispute.closed"
                        and (entry.internal or {}).get("id") == dispute_id for entry in seen)
    internal = {**dispute, "event_id": event_id}
    if str(dispute.get("status")) in CLOSED:
        if closed_before:
            return "already_applied"
        resolved = attention.resolve(session, order_id=order.id, kind=attention.Kind.DISPUTE)
        # This entry is the resolution's record: it says the dispute item closed by itself.
        order.record("dispute.closed", internal=internal,
                     detail={"attention_resolved": "dispute"} if resolved else None)
        return "dispute_closed"
    if closed_before:
        return "dispute_already_closed"
    opened_before = any(entry.type == "dispute.created"
                        and (entry.internal or {}).get("id") == dispute_id for entry in seen)
    attention.flag(session, order_id=order.id, kind=attention.Kind.DISPUTE,
                   message=f"The customer disputed the charge ({dispute.get('reason')}, "
                           f"{dispute.get('amount')} {dispute.get('currency')})")
    order.record("dispute.updated" if opened_before else "dispute.created", internal=internal)
    return "dispute_recorded"
