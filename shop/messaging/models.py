"""The transactional outbox and the per-message delivery counter."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from shop.db import Base, UTCDateTime, utcnow


class OutboxMessage(Base):
    """A message written in the same transaction as the change that causes it.

    ``kind`` is ``task`` (``name`` is a Celery task name, ``payload`` its kwargs) or
    ``event`` (``name`` is a routing key on ``exchange``, ``payload`` the JSON body).
    ``id`` is the message id a consumer dedupes on; the relay sets ``published_at``.
    """

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "published_at", "available_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(10))
    name: Mapped[str] = mapped_column(String(200))
    exchange: Mapped[str | None] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    available_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    published_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    trace: Mapped[str | None] = mapped_column(String(100))  # the request that caused it
    # The span that wrote it (W3C ``traceparent``), when tracing is on (``shop.tracing``).
    traceparent: Mapped[str | None] = mapped_column(String(55))


class TaskDelivery(Base):
    """How often a task message has been started: bounds redelivery loops."""

    __tablename__ = "task_deliveries"

    message_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(200))
    deliveries: Mapped[int] = mapped_column(Integer, default=0)
    first_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
