"""The outbox relay's claim-publish-mark cycle against a real database."""

from __future__ import annotations

import datetime as dt
import sys
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from shop.messaging.models import OutboxMessage
from shop.messaging.service import enqueue_event, enqueue_task, outbox_lag, relay_batch


def test_committed_messages_are_published_once_and_marked(session: Session) -> None:
    for i in range(3):
        enqueue_task(session, name="shop.orders.check_inventory", kwargs={"order_id": str(i)})
    session.commit()
    sent: list[str] = []
    assert relay_batch(session, publish=lambda m: sent.append(m.payload["order_id"]),
                       limit=10) == 3
    assert relay_batch(session, publish=lambda m: sent.append("again"), limit=10) == 0
    assert sorted(sent) == ["0", "1", "2"]
    assert outbox_lag(session)[0] == 0  # nothing left unpublished


def test_uncommitted_messages_never_leave(session: Session) -> None:
    enqueue_task(session, name="shop.orders.check_inventory", kwargs={"order_id": "x"})
    session.rollback()
    assert relay_batch(session, publish=lambda m: pytest.fail("published"), limit=10) == 0


def test_a_row_that_cannot_be_published_steps_aside_for_the_rest(session: Session) -> None:
    bad = enqueue_event(session, exchange="shop.events", routing_key="bad", body={},
                        message_id=uuid.uuid4())
    session.commit()
    enqueue_task(session, name="shop.orders.check_inventory", kwargs={"order_id": "good"})
    session.commit()

    def publish(message: OutboxMessage) -> None:
        if message.name == "bad":
            raise ConnectionError("exchange refused")

    with pytest.raises(ConnectionError):
        relay_batch(session, publish=publish, limit=10)
    assert relay_batch(session, publish=publish, limit=10) == 1
    failed = session.scalar(select(OutboxMessage).where(OutboxMessage.id == bad.id))
    assert failed is not None
    assert failed.published_at is None
    assert failed.attempts == 1
    assert "exchange refused" in (failed.last_error or "")


def test_a_delayed_message_waits_on_the_database_clock_not_the_relays(
        session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    from shop.messaging.service import enqueue_task, relay_batch

    enqueue_task(session, name="shop.test.later", kwargs={}, delay=60)
    session.commit()
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    for module in [m for name, m in sys.modules.items() if name.startswith("shop")]:
        if hasattr(module, "utcnow"):
            monkeypatch.setattr(module, "utcnow", lambda: ahead)
    sent: list[str] = []
    assert relay_batch(session, publish=lambda m: sent.append(m.name), limit=10) == 0
    assert sent == []
