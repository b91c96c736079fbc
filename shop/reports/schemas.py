"""The admin API's report bodies."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from shop.reports.service import MailStatus


def _iso_day(value: Any) -> Any:
    """Only ``YYYY-MM-DD``: no timestamps, no datetimes that happen to be at midnight."""
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("expected a day as YYYY-MM-DD")
    return value


Day = Annotated[dt.date, BeforeValidator(_iso_day)]


class DailyReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    date: Day = Field(description="The shop's local day (SHOP_TIMEZONE), YYYY-MM-DD; "
                                  "it must have ended")
    resend: bool = Field(default=False, description="Mail the stored report again "
                                                    "(it is not rebuilt)")


class MailOut(BaseModel):
    status: MailStatus = Field(
        description="sent; failed: the last attempt failed (the task retries, then leaves "
                    "it unsent for an admin to resend); pending: queued or being sent; "
                    "not_configured: SHOP_REPORT_RECIPIENTS is empty")
    mailed_at: dt.datetime | None
    resends: int
    error: str | None = Field(description="why the last email did not leave")


class DailyReportOut(BaseModel):
    day: dt.date
    timezone: str
    created_at: dt.datetime
    built_now: bool = Field(description="built by this request (POST only)")
    mail: MailOut
    data: dict[str, Any] = Field(description="every figure; money in minor units per currency")
