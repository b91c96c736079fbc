"""Stored daily sales reports, one per local day, and the index the report reads by.

The row is the once-per-day guard: its primary key is the day, it is inserted once,
and its ``data`` is never rebuilt. Every email, resends included, is rendered from
``data``, so a copy of the email can differ only in its ``Date`` header.

``resends`` counts the resends asked for: the email of resend ``n`` goes through the
notification ledger under its own key (``service.mail_key``). ``mailed_at`` says that
the current key was delivered; ``mail_error`` keeps the last delivery failure for
admins while it is unsent.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Date, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from shop.db import Base, UTCDateTime, utcnow
from shop.orders.models import OrderEvent


class DailyReport(Base):
    __tablename__ = "daily_reports"

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    timezone: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    mailed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    resends: Mapped[int] = mapped_column(Integer, default=0)
    mail_error: Mapped[str | None] = mapped_column(Text)


# The report counts the order timeline's events by time (confirmations, failures,
# cancellations of one day); without this index that is a scan of every event ever.
# Declared here, by the domain that needs it, on the orders domain's table.
ORDER_EVENTS_AT = Index("ix_order_events_at", OrderEvent.at)
