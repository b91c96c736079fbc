"""Writing to the outbox, marking messages consumed, and the relay's claim-publish-mark
cycle.

Messages are added to the caller's session and leave only after its commit: the
process that committed publishes them at once (``shop.messaging.dispatch``), and the
step that consumes one marks its row in its own transaction. The relay publishes
only rows nobody consumed within a grace period (a crash between commit and publish,
a broker that was down), so it is a safety net off the hot path.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Integer, cast, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shop import tracing
from shop.db import db_now, session_scope, utcnow
from shop.logs import REQUEST_ID
from shop.messaging.models import OutboxMessage, TaskDelivery

log = logging.getLogger(__name__)

Publish = Callable[[OutboxMessage], None]
DELAYS = "shop.outbox.delays"
MAX_DEFER = 10.0  # seconds a failed row waits at most before the relay tries it again


def enqueue_task(
    session: Session, *, name: str, kwargs: dict[str, Any], delay: float = 0,
    message_id: uuid.UUID | None = None,
) -> OutboxMessage:
    """Add a Celery task message to the outbox; it is sent after the caller commits."""
    message = OutboxMessage(
        id=message_id or uuid.uuid4(), kind="task", name=str(name), exchange=None,
        payload=kwargs, available_at=db_now(delay), trace=REQUEST_ID.get(),
        traceparent=tracing.traceparent(),
    )
    if delay > 0:  # what a direct publish after the commit gives as countdown
        session.info.setdefault(DELAYS, {})[message.id] = delay
    session.add(message)
    return message


def enqueue_event(
    session: Session, *, exchange: str, routing_key: str, body: dict[str, Any],
    message_id: uuid.UUID,
) -> OutboxMessage:
    """Add an integration event for other systems; ``message_id`` is what they dedupe on."""
    message = OutboxMessage(
        id=message_id, kind="event", name=routing_key, exchange=exchange, payload=body,
        available_at=db_now(), trace=REQUEST_ID.get(),
        traceparent=tracing.traceparent(),
    )
    session.add(message)
    return message


def mark_consumed(session: Session, *, message_id: str) -> None:
    """Note, in the consuming step's own transaction, that its message arrived, so the
    relay never sends it again (no extra commit: the step's commit carries it)."""
    try:
        key = uuid.UUID(message_id)
    except ValueError:
        return  # not an outbox message (e.g. sent by beat)
    session.execute(update(OutboxMessage)
                    .where(OutboxMessage.id == key, OutboxMessage.published_at.is_(None))
                    .values(published_at=db_now()))


def hand_to_relay(session: Session, *, message_ids: list[uuid.UUID], grace: float) -> None:
    """Messages whose direct publish failed: due for the relay now, not after the grace
    (the caller commits)."""
    session.execute(update(OutboxMessage)
                    .where(OutboxMessage.id.in_(message_ids), OutboxMessage.published_at.is_(None))
                    .values(available_at=db_now(-grace)))


def mark_published(session: Session, *, message_ids: list[uuid.UUID]) -> None:
    """Messages the broker confirmed and nothing of ours will mark (the caller commits)."""
    session.execute(update(OutboxMessage)
                    .where(OutboxMessage.id.in_(message_ids), OutboxMessage.published_at.is_(None))
                    .values(published_at=db_now()))


def relay_batch(session: Session, *, publish: Publish, limit: int, grace: float = 0,
                waits: Callable[[OutboxMessage], bool] | None = None) -> int:
    """Publish up to ``limit`` due messages; returns how many went out.

    Rows are due ``grace`` seconds late: their committer published them already, and
    their consumer (or, for events, the committer) marks them; the relay only sends
    what neither did.

    Rows are claimed with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL), so several relays
    share the work without sending a message twice; SQLite serializes writers instead.
    A publish failure leaves the row (and the rest of the batch) for a later pass.
    ``waits`` holds back rows whose consumer is merely slow: a queue with a backlog
    will deliver its published copy in time, and a second copy would only add load.
    """
    due = (
        select(OutboxMessage)
        .where(OutboxMessage.published_at.is_(None),
               OutboxMessage.available_at <= db_now(-grace))
        .order_by(OutboxMessage.available_at, OutboxMessage.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    sent = 0
    try:
        for message in session.scalars(due).all():
            if waits is not None and waits(message):
                continue
            try:
                publish(message)
            except Exception as exc:
                # Step aside so one unpublishable row cannot block the rows behind it.
                message.attempts += 1
                message.last_error = f"{type(exc).__name__}: {exc}"[:2000]
                step_aside = min(MAX_DEFER, 0.5 * 2 ** min(message.attempts, 10))
                message.available_at = db_now(step_aside - grace)
                raise
            message.published_at = utcnow()
            sent += 1
    finally:
        session.commit()
    return sent


def outbox_lag(session: Session) -> tuple[int, float]:
    """Messages not yet published, and how long the oldest has waited (seconds)."""
    count, oldest = session.execute(
        select(func.count(), func.min(OutboxMessage.created_at))
        .where(OutboxMessage.published_at.is_(None))).one()
    return int(count or 0), (utcnow() - oldest).total_seconds() if oldest else 0.0


def delivery_count(session: Session, *, message_id: str) -> int:
    """How often ``message_id`` was counted so far (0 if never)."""
    return int(session.scalar(select(TaskDelivery.deliveries)
                              .where(TaskDelivery.message_id == message_id)) or 0)


def count_delivery(session: Session, *, message_id: str, task_name: str) -> int:
    """Count one more start of a task message and return the total so far."""
    for _ in range(3):
        now = utcnow()
        bumped = session.execute(
            update(TaskDelivery)
            .where(TaskDelivery.message_id == message_id)
            .values(deliveries=cast(TaskDelivery.deliveries + 1, Integer), last_at=now)
            .returning(TaskDelivery.deliveries)
        ).scalar()
        if bumped is not None:
            session.commit()
            return int(bumped)
        session.add(TaskDelivery(message_id=message_id, task_name=task_name, deliveries=1,
                                 first_at=now, last_at=now))
        try:
            session.commit()
        except IntegrityError:  # a concurrent copy inserted first: bump theirs
            session.rollback()
            continue
        return 1
    raise RuntimeError(f"could not count delivery of {message_id}")


class OutboxCollector(Collector):
    """The outbox's backlog and its oldest unpublished row's age, read when scraped."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        backlog = GaugeMetricFamily("shop_outbox_backlog", "Outbox rows not yet published")
        age = GaugeMetricFamily("shop_outbox_oldest_age_seconds",
                                "Age of the oldest unpublished outbox row")
        try:
            with session_scope() as session:
                count, oldest = outbox_lag(session)
        except Exception:
            log.exception("metrics: the outbox could not be read")
            return
        backlog.add_metric([], float(count))
        age.add_metric([], oldest)
        yield backlog
        yield age
