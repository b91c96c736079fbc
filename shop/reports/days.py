"""The shop's local days and hours as UTC instants, and which days a report is due for.

A local day is ``[local midnight, next local midnight)``, converted to UTC through
``zoneinfo``, so the days on which the clocks change are 23 or 25 hours long (and a
day whose midnight does not exist starts when the clocks jump). Its hours are the
instants at which the local clock shows ``HH:00``: on a 25-hour day ``01:00`` comes
twice, with different UTC offsets, and each is an hour of its own.

Only pure functions here: the database compares UTC instants computed by them, so
SQLite (which has no time zones) and PostgreSQL group the same rows the same way.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

EARLIEST_DAY = dt.date(2000, 1, 1)  # older days are refused (and far from any shop data)
CATCH_UP_DAYS = 7  # how far back a beat that was down builds the reports it missed
_GRID = dt.timedelta(minutes=15)  # every UTC offset in use is a multiple of 15 minutes


@dataclass(frozen=True, slots=True)
class Hour:
    """One local hour of a day: where it starts in UTC and how the local clock reads."""

    start: dt.datetime
    local: str  # "01:00"
    offset: str  # "+01:00"
    zone: str  # "BST"


@dataclass(frozen=True, slots=True)
class Window:
    """A local day as ``[start, end)`` in UTC."""

    day: dt.date
    timezone: str
    start: dt.datetime
    end: dt.datetime

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600


def local_day(day: dt.date, timezone: str) -> Window:
    """The UTC boundaries of ``day`` in ``timezone``."""
    tz = ZoneInfo(timezone)
    start = dt.datetime.combine(day, dt.time(0), tzinfo=tz).astimezone(dt.UTC)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=tz)
    return Window(day=day, timezone=timezone, start=start, end=end.astimezone(dt.UTC))


def hours(window: Window) -> list[Hour]:
    """Every local hour of the day, in order (23, 24 or 25 of them)."""
    tz = ZoneInfo(window.timezone)
    found: list[Hour] = []
    moment = window.start
    while moment < window.end:
        local = moment.astimezone(tz)
        if local.minute == 0 or not found:
            offset = local.isoformat()[-6:]
            found.append(Hour(start=moment, local=local.strftime("%H:%M"), offset=offset,
                              zone=local.tzname() or offset))
        moment += _GRID
    return found


def day_has_ended(day: dt.date, *, timezone: str, now: dt.datetime) -> bool:
    """Whether the local ``day`` is over at ``now`` (a report of it is final).

    Days at the ends of the calendar have bounds that ``datetime`` cannot hold in UTC
    (``9999-12-31``; ``0001-01-01`` east of UTC): the last ones have not ended at any
    ``now``, the first ones ended long ago.
    """
    try:
        window = local_day(day, timezone)
    except OverflowError:
        return day < now.date()
    return window.end <= now


def latest_due_day(*, now: dt.datetime, timezone: str, report_time: dt.time) -> dt.date:
    """The most recent day whose report is due: yesterday once the local clock has
    passed ``report_time`` today, the day before yesterday until then."""
    tz = ZoneInfo(timezone)
    today = now.astimezone(tz).date()
    due_at = dt.datetime.combine(today, report_time, tzinfo=tz)  # a skipped time: after it
    return today - dt.timedelta(days=1 if now >= due_at else 2)


def days_to_build(*, latest_due: dt.date, earliest_stored: dt.date | None,
                  stored: set[dt.date]) -> list[dt.date]:
    """The due days without a report, oldest first.

    A beat that was down builds what it missed, up to ``CATCH_UP_DAYS`` back, but
    never days before the first report the shop ever stored: a new shop starts with
    the latest due day instead of mailing a week of empty reports.
    """
    if earliest_stored is None:
        first = latest_due
    else:
        first = max(earliest_stored, latest_due - dt.timedelta(days=CATCH_UP_DAYS - 1))
    days = [first + dt.timedelta(days=n) for n in range((latest_due - first).days + 1)]
    return [day for day in days if day not in stored]
