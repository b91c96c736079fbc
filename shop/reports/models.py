"""Stored daily sales reports, one per local day."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Date, String
from sqlalchemy.orm import Mapped, mapped_column

from shop.db import Base, UTCDateTime, utcnow


class DailyReport(Base):
    __tablename__ = "daily_reports"

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    timezone: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    mailed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
