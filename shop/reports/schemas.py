"""The admin API's report bodies."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shop.reports.service import MailStatus


class DailyReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    date: dt.date = Field(description="The shop's local day (SHOP_TIMEZONE), YYYY-MM-DD; "
                                      "it must have ended")
    resend: bool = Field(default=False, description="Mail the stored report again "
                                                    "(it is not rebuilt)")


class MailOut(BaseModel):
    status: MailStatus = Field(
        description="failed: kept unsent for an admin to resend; not_configured: "
                    "SHOP_REPORT_RECIPIENTS is empty")
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
