"""Local days as UTC instants, their hours, and which days a report is due for."""

from __future__ import annotations

import datetime as dt

import pytest

from shop.reports.days import (
    CATCH_UP_DAYS,
    day_has_ended,
    days_to_build,
    hours,
    latest_due_day,
    local_day,
)

UTC = dt.UTC


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("day", "start", "end", "length"), [
    (dt.date(2026, 3, 29), "2026-03-29 00:00", "2026-03-29 23:00", 23),  # clocks forward
    (dt.date(2026, 10, 25), "2026-10-24 23:00", "2026-10-26 00:00", 25),  # clocks back
    (dt.date(2026, 7, 1), "2026-06-30 23:00", "2026-07-01 23:00", 24),  # summer
    (dt.date(2026, 1, 15), "2026-01-15 00:00", "2026-01-16 00:00", 24),  # winter
])
def test_a_london_day_is_its_two_local_midnights_in_utc(
        day: dt.date, start: str, end: str, length: int) -> None:
    window = local_day(day, "Europe/London")

    assert (window.start, window.end, window.hours) == (utc(start), utc(end), length)
    assert len(hours(window)) == length


def test_the_23_hour_day_has_no_one_oclock() -> None:
    found = [(h.local, h.offset) for h in hours(local_day(dt.date(2026, 3, 29), "Europe/London"))]

    assert found[:3] == [("00:00", "+00:00"), ("02:00", "+01:00"), ("03:00", "+01:00")]
    assert found[-1] == ("23:00", "+01:00")


def test_the_25_hour_day_has_one_oclock_twice_as_two_hours() -> None:
    day = hours(local_day(dt.date(2026, 10, 25), "Europe/London"))

    assert [(h.local, h.offset, h.zone, h.start) for h in day[1:3]] == [
        ("01:00", "+01:00", "BST", utc("2026-10-25 00:00")),
        ("01:00", "+00:00", "GMT", utc("2026-10-25 01:00"))]


def test_hours_follow_half_hour_offsets() -> None:
    day = hours(local_day(dt.date(2026, 6, 1), "Asia/Kolkata"))

    assert (day[0].start, day[1].start, len(day)) == (
        utc("2026-05-31 18:30"), utc("2026-05-31 19:30"), 24)


def test_a_day_whose_midnight_never_happens_starts_when_the_clocks_jump() -> None:
    window = local_day(dt.date(2026, 3, 8), "America/Havana")  # 00:00 -> 01:00

    assert window.start == utc("2026-03-08 05:00")
    assert hours(window)[0].local == "01:00"
    assert window.hours == 23


def test_a_day_has_ended_only_at_its_last_local_midnight() -> None:
    day = dt.date(2026, 3, 29)

    assert not day_has_ended(day, timezone="Europe/London", now=utc("2026-03-29 22:59:59"))
    assert day_has_ended(day, timezone="Europe/London", now=utc("2026-03-29 23:00"))



@pytest.mark.parametrize("timezone", ["UTC", "America/Los_Angeles", "Pacific/Kiritimati"])
def test_the_days_at_the_ends_of_the_calendar_have_an_answer_too(timezone: str) -> None:
    now = utc("2026-03-30 12:00")

    assert not day_has_ended(dt.date.max, timezone=timezone, now=now)
    assert not day_has_ended(dt.date.max - dt.timedelta(days=1), timezone=timezone, now=now)
    assert day_has_ended(dt.date.min, timezone=timezone, now=now)

@pytest.mark.parametrize(("now", "due"), [
    ("2026-03-29 23:14", dt.date(2026, 3, 28)),  # 00:14 BST on the 30th: not yet
    ("2026-03-29 23:15", dt.date(2026, 3, 29)),  # 00:15 BST: yesterday is due
    ("2026-03-30 12:00", dt.date(2026, 3, 29)),
    ("2026-10-24 23:14", dt.date(2026, 10, 23)),  # 00:14 BST on the 25th
    ("2026-10-24 23:15", dt.date(2026, 10, 24)),
])
def test_yesterday_is_due_once_the_local_clock_passes_the_report_time(
        now: str, due: dt.date) -> None:
    assert latest_due_day(now=utc(now), timezone="Europe/London",
                          report_time=dt.time(0, 15)) == due


def test_a_report_time_the_clocks_skip_is_due_when_they_jump_past_it() -> None:
    # 01:30 does not exist on 2026-03-29 in London: due from 02:30 BST (01:30 UTC).
    assert latest_due_day(now=utc("2026-03-29 01:29"), timezone="Europe/London",
                          report_time=dt.time(1, 30)) == dt.date(2026, 3, 27)
    assert latest_due_day(now=utc("2026-03-29 01:30"), timezone="Europe/London",
                          report_time=dt.time(1, 30)) == dt.date(2026, 3, 28)


def test_a_new_shop_builds_only_the_latest_due_day() -> None:
    due = dt.date(2026, 3, 29)

    assert days_to_build(latest_due=due, earliest_stored=None, stored=set()) == [due]


def test_a_beat_that_was_down_builds_each_missed_day_once() -> None:
    stored = {dt.date(2026, 3, d) for d in (20, 21, 22, 23, 25)}

    assert days_to_build(latest_due=dt.date(2026, 3, 27), earliest_stored=dt.date(2026, 1, 1),
                         stored=stored) == [dt.date(2026, 3, 24), dt.date(2026, 3, 26),
                                            dt.date(2026, 3, 27)]


def test_catching_up_stops_a_week_back_and_at_the_first_report() -> None:
    due = dt.date(2026, 3, 29)

    assert len(days_to_build(latest_due=due, earliest_stored=dt.date(2025, 1, 1),
                             stored=set())) == CATCH_UP_DAYS
    assert days_to_build(latest_due=due, earliest_stored=dt.date(2026, 3, 28),
                         stored={dt.date(2026, 3, 28)}) == [due]
    assert days_to_build(latest_due=due, earliest_stored=dt.date(2026, 3, 30),
                         stored={dt.date(2026, 3, 30)}) == []
