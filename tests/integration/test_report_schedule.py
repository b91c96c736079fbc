"""The beat entry of the daily report: yesterday's report once the local clock passes
SHOP_REPORT_TIME, missed days caught up, and no day built twice.

The entry's task signature is run in-process, with the clock the task reads set to
chosen moments; what it queues is run from the outbox the way the relay would send it.
``tests/e2e/test_report_beat.py`` runs a real beat.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

import shop.reports.tasks as tasks
from shop.celery import app
from shop.config import get_settings
from shop.messaging.models import OutboxMessage
from shop.reports.models import DailyReport
from shop.reports.schedule import BEAT_ENTRY, DAILY_REPORT_TASK
from tests.factories.orders import ProductFactory
from tests.fixtures.reporting import ShopDay
from tests.fixtures.smtp import SmtpServer

UTC = dt.UTC


@pytest.fixture
def shop_in_london(smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> SmtpServer:
    monkeypatch.setenv("SHOP_TIMEZONE", "Europe/London")
    monkeypatch.setenv("SHOP_REPORT_TIME", "00:15")
    monkeypatch.setenv("SHOP_REPORT_RECIPIENTS", "boss@example.com")
    monkeypatch.setenv("SHOP_SMTP_URL", smtp_server.url)
    get_settings.cache_clear()
    return smtp_server


class Beat:
    """Runs the schedule's report entry as beat would send it, at a chosen moment."""

    def __init__(self, session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
        self.session = session
        self.monkeypatch = monkeypatch
        self.entry: dict[str, Any] = app.conf.beat_schedule[BEAT_ENTRY]

    def tick(self, at: dt.datetime) -> None:
        self.monkeypatch.setattr(tasks, "utcnow", lambda: at)
        entry = self.entry
        signature = app.signature(entry["task"], args=entry.get("args", ()),
                                  kwargs=entry.get("kwargs", {}), **entry.get("options", {}))
        signature.apply(throw=True)

    def relay(self) -> list[str]:
        """Run the report tasks queued in the outbox (as the relay and a worker would)."""
        queued = self.session.scalars(select(OutboxMessage).where(
            OutboxMessage.name == DAILY_REPORT_TASK, OutboxMessage.published_at.is_(None))
            .order_by(OutboxMessage.created_at)).all()
        days = [message.payload["day"] for message in queued]
        for message in queued:
            message.published_at = message.created_at
        self.session.commit()
        for day in days:
            app.signature(DAILY_REPORT_TASK, kwargs={"day": day}).apply(throw=True)
        return days


def stored(session: Session) -> dict[dt.date, DailyReport]:
    rows = session.scalars(select(DailyReport).execution_options(populate_existing=True)).all()
    session.commit()
    return {row.day: row for row in rows}


def test_the_schedule_runs_the_report_every_minute_on_the_reports_queue() -> None:
    entry = app.conf.beat_schedule[BEAT_ENTRY]

    assert entry["task"] == "shop.reports.build_due_reports"
    assert entry["schedule"] <= 60
    assert app.amqp.router.route({}, entry["task"])["queue"].name == "reports"
    assert app.amqp.router.route({}, DAILY_REPORT_TASK)["queue"].name == "reports"


def test_the_scheduled_entry_builds_and_mails_yesterday_after_report_time_once(
        session: Session, shop_in_london: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    shop = ShopDay(session)
    shop.product("HAT", price=2000, currency="EUR")
    shop.sell({"HAT": 1}, placed=dt.datetime(2026, 3, 29, 22, 30, tzinfo=UTC))  # 23:30 BST
    beat = Beat(session, monkeypatch)

    beat.tick(dt.datetime(2026, 3, 29, 23, 14, tzinfo=UTC))  # 00:14 BST on the 30th
    assert dt.date(2026, 3, 29) not in stored(session)
    assert beat.relay() == ["2026-03-28"]  # a new shop starts with the latest due day

    beat.tick(dt.datetime(2026, 3, 29, 23, 15, tzinfo=UTC))  # 00:15 BST: report time
    assert beat.relay() == ["2026-03-29"]
    report = stored(session)[dt.date(2026, 3, 29)]
    assert report.data["money"]["EUR"]["gross"] == 2000
    assert report.mailed_at is not None

    for minutes in (16, 17, 45):  # beat keeps asking; nothing more is built or sent
        beat.tick(dt.datetime(2026, 3, 29, 23, minutes, tzinfo=UTC))
    assert beat.relay() == []
    assert stored(session)[dt.date(2026, 3, 29)].created_at == report.created_at
    subjects = [m["Subject"] for m in shop_in_london.messages]
    assert subjects == ["Daily sales report: Saturday 28 March 2026 (Europe/London)",
                        "Daily sales report: Sunday 29 March 2026 (Europe/London)"]


def test_a_beat_started_after_report_time_builds_each_missed_day_once(
        session: Session, shop_in_london: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    ProductFactory()
    beat = Beat(session, monkeypatch)
    beat.tick(dt.datetime(2026, 3, 25, 12, tzinfo=UTC))  # the last tick before beat went down
    assert beat.relay() == ["2026-03-24"]

    beat.tick(dt.datetime(2026, 3, 29, 23, 40, tzinfo=UTC))  # back at 00:40 BST on the 30th
    beat.tick(dt.datetime(2026, 3, 29, 23, 41, tzinfo=UTC))

    assert beat.relay() == ["2026-03-25", "2026-03-26", "2026-03-27", "2026-03-28",
                            "2026-03-29"]
    assert sorted(stored(session)) == [dt.date(2026, 3, d) for d in range(24, 30)]
    assert len(shop_in_london.messages) == 6
    assert all(r.mailed_at is not None for r in stored(session).values())


def test_a_day_built_by_hand_is_not_built_again_by_beat(
        session: Session, shop_in_london: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from shop.cli.main import main

    ProductFactory()
    assert main(["report", "daily", "--date", "2026-03-29"]) == 0
    built = stored(session)[dt.date(2026, 3, 29)].created_at
    beat = Beat(session, monkeypatch)

    beat.tick(dt.datetime(2026, 3, 30, 6, tzinfo=UTC))

    assert beat.relay() == []
    assert stored(session)[dt.date(2026, 3, 29)].created_at == built
    assert len(shop_in_london.messages) == 1
