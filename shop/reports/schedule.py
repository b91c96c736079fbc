"""The report's task names and its beat entry (read by ``shop.celery``).

Beat asks every ``CHECK_EVERY`` seconds, and once as it starts, which days are due
(``service.build_due_reports``): after ``SHOP_REPORT_TIME`` in ``SHOP_TIMEZONE``,
yesterday is. Asking often, instead of once at report time, is what lets a beat that
was down (or a message lost) catch up; the stored report row keeps it to one build.
"""

from __future__ import annotations

from typing import Any

BUILD_DUE_TASK = "shop.reports.build_due_reports"
DAILY_REPORT_TASK = "shop.reports.daily_report"
TASKS = (BUILD_DUE_TASK, DAILY_REPORT_TASK)
CHECK_EVERY = 60.0
BEAT_ENTRY = "daily-sales-report"


def beat_schedule() -> dict[str, dict[str, Any]]:
    """The report's entry of the beat schedule."""
    # Each check is due within the minute; a check that waited longer is stale
    # (the next one does the same work), so it expires instead of piling up.
    return {BEAT_ENTRY: {"task": BUILD_DUE_TASK, "schedule": CHECK_EVERY,
                         "options": {"expires": CHECK_EVERY * 5}}}
