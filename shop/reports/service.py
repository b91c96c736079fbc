"""Daily report use cases: build a local day once, mail it once (again only on request).

    run_daily_report    what ``shop report daily``, ``POST /admin/reports/daily`` and
                        the beat's per-day task run: build the day unless it has a
                        report, then mail it unless it was mailed (``resend``: again)
    build_due_reports   what beat runs every minute: build each due day that has no
                        report, and queue its email in the same commit
    get_report          the stored report of a day

Once per day: the report row is inserted before its figures are computed, in the
transaction that stores them. A second builder waits on that row (PostgreSQL) or on
the write lock (SQLite) and then finds it, so a day is built once however many beats,
retries and admins ask. Emails go through the notification ledger, keyed
``daily_report:<day>`` (``:resend:<n>`` for the n-th resend), with a Message-ID
derived from the key, and are rendered from the stored figures only: a crash between
"sent" and "marked sent" can at worst send the same email again, same Message-ID.

Errors::

    ReportError
    ├── DayRefused        the day is not over yet, or before 2000: nothing is built
    ├── NoRecipients      a resend without SHOP_REPORT_RECIPIENTS
    └── ReportNotFound    no report is stored for that day
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shop import metrics
from shop.config import Settings
from shop.db import insert_for, utcnow
from shop.exceptions import InvariantBroken, PermanentError
from shop.messaging.service import enqueue_task
from shop.notifications.mailer import Mailer, MailError
from shop.notifications.service import send_notification
from shop.reports import figures, rendering
from shop.reports.days import (
    CATCH_UP_DAYS,
    EARLIEST_DAY,
    day_has_ended,
    days_to_build,
    latest_due_day,
)
from shop.reports.models import DailyReport
from shop.reports.schedule import DAILY_REPORT_TASK

log = logging.getLogger(__name__)

MailStatus = Literal["sent", "failed", "pending", "not_configured"]
MAIL_KIND = "daily_report"
# Above the report tasks' hard time limit: a send cannot outlive its claim.
MAIL_LEASE_SECONDS = 300.0


class ReportError(PermanentError):
    """Base of the report use cases' refusals (asking again gives the same answer)."""


class DayRefused(ReportError):
    """No report can be built for this day (yet)."""


class NoRecipients(ReportError):
    """A resend was asked for, and there is nobody to send to."""


class ReportNotFound(ReportError):
    """No report is stored for this day."""


@dataclass(frozen=True, slots=True)
class Result:
    report: DailyReport
    built: bool  # built by this call
    mailed: bool  # an email left during this call
    mail_failure: MailError | None = None  # why it did not (recorded on the report)


def mail_key(day: dt.date, resends: int) -> str:
    """The ledger key of a day's email: the first one, then each resend's own."""
    key = f"{MAIL_KIND}:{day.isoformat()}"
    return f"{key}:resend:{resends}" if resends else key


def mail_status(report: DailyReport, settings: Settings) -> MailStatus:
    """``sent``, ``failed`` (kept for an admin to resend), ``pending`` or ``not_configured``."""
    if report.mailed_at is not None:
        return "sent"
    if report.mail_error is not None:
        return "failed"
    return "pending" if settings.recipients else "not_configured"


def check_day(day: dt.date, *, timezone: str, now: dt.datetime) -> None:
    """Refuse a day that has not ended in the shop's zone (its figures are not final)."""
    if day < EARLIEST_DAY:
        raise DayRefused(f"{day.isoformat()} is before {EARLIEST_DAY.isoformat()}")
    if not day_has_ended(day, timezone=timezone, now=now):
        raise DayRefused(f"{day.isoformat()} has not ended yet in {timezone}")


def run_daily_report(session: Session, *, day: dt.date, resend: bool, settings: Settings,
                     mailer: Mailer, now: dt.datetime) -> Result:
    """Build the day's report unless stored, then mail it unless mailed (or ``resend``).

    A failed email leaves the report stored and unsent (``mail_error`` says why); the
    result carries the error for the caller to retry or to show.
    """
    check_day(day, timezone=settings.timezone, now=now)
    if resend and not settings.recipients:
        raise NoRecipients("resend needs SHOP_REPORT_RECIPIENTS")
    built = ensure_built(session, day=day, settings=settings, now=now)[1]
    try:
        mailed = deliver(session, day=day, resend=resend, settings=settings, mailer=mailer)
    except MailError as exc:
        metrics.REPORT_RUNS.labels(outcome="mail_failed").inc()
        return Result(report=get_report(session, day=day), built=built, mailed=False,
                      mail_failure=exc)
    metrics.REPORT_RUNS.labels(outcome="built" if built else "stored").inc()
    return Result(report=get_report(session, day=day), built=built, mailed=mailed)


def ensure_built(session: Session, *, day: dt.date, settings: Settings, now: dt.datetime,
                 queue_mail: bool = False) -> tuple[DailyReport, bool]:
    """The day's stored report, built now if there is none; True if this call built it.

    ``queue_mail`` puts the email's task in the outbox in the report's own commit.
    """
    stored = _find(session, day)
    if stored is not None:
        session.commit()
        return stored, False
    table = DailyReport.__table__
    claim = insert_for(session, table).values(  # type: ignore[arg-type]
        day=day, timezone=settings.timezone, data={}, created_at=utcnow(), resends=0)
    claimed = session.execute(claim.on_conflict_do_nothing(  # type: ignore[attr-defined]
        index_elements=["day"]).returning(table.c.day)).scalar()
    if claimed is None:  # another copy built it meanwhile
        session.rollback()
        report = _find(session, day)
        if report is None:
            raise InvariantBroken("report is missing")
        session.commit()
        return report, False
    data = figures.build(session, day=day, timezone=settings.timezone,
                         low_stock_below=settings.report_low_stock, now=now,
                         unshipped_after_days=settings.report_unshipped_days)
    session.execute(update(DailyReport).where(DailyReport.day == day).values(data=data))
    if queue_mail and settings.recipients:
        enqueue_task(session, name=DAILY_REPORT_TASK, kwargs={"day": day.isoformat()})
    session.commit()
    log.info("daily report for %s built", day)
    report = _find(session, day)
    if report is None:
        raise InvariantBroken("report is missing")
    return report, True


def deliver(session: Session, *, day: dt.date, resend: bool, settings: Settings,
            mailer: Mailer) -> bool:
    """Mail the stored report unless it was mailed (``resend``: mail it again).

    True if an email left during this call. A resend of a report whose last email
    never left sends that email (same key); otherwise it opens the next resend key.
    """
    report = get_report(session, day=day)
    if not settings.recipients:
        session.commit()
        return False
    if resend and report.mailed_at is not None:
        session.execute(update(DailyReport)
                        .where(DailyReport.day == day, DailyReport.resends == report.resends)
                        .values(resends=report.resends + 1, mailed_at=None, mail_error=None))
        session.commit()
        report = get_report(session, day=day)
    if report.mailed_at is not None:
        session.commit()
        return False
    resends, data = report.resends, report.data
    session.commit()
    try:
        sent = send_notification(
            session, key=mail_key(day, resends), kind=MAIL_KIND, order_id=None,
            recipients=settings.recipients, template=rendering.TEMPLATE,
            context=rendering.context(data), mailer=mailer, sender=settings.mail_from,
            lease_seconds=MAIL_LEASE_SECONDS, attachments=[rendering.csv_attachment(data)])
    except MailError as exc:
        _mark(session, day=day, resends=resends, mail_error=str(exc)[:2000])
        raise
    # Not sent by this call means the ledger had it sent already: mark it either way.
    _mark(session, day=day, resends=resends, mailed_at=utcnow(), mail_error=None)
    return sent


def record_mail_failure(session: Session, *, day: dt.date, error: str) -> None:
    """The email's task gave up: leave the report stored and unsent, saying why."""
    log.error("daily report for %s left unsent: %s", day, error)
    session.execute(update(DailyReport)
                    .where(DailyReport.day == day, DailyReport.mailed_at.is_(None))
                    .values(mail_error=error[:2000]))
    session.commit()


def build_due_reports(session: Session, *, settings: Settings, now: dt.datetime) -> list[dt.date]:
    """Build every due day without a report (a beat that was down catches up here).

    Each day is built and its email queued in one commit; the days built are returned.
    """
    latest = latest_due_day(now=now, timezone=settings.timezone,
                            report_time=settings.report_clock)
    earliest = session.scalar(select(func.min(DailyReport.day)))
    stored = set(session.scalars(select(DailyReport.day).where(
        DailyReport.day > latest - dt.timedelta(days=CATCH_UP_DAYS),
        DailyReport.day <= latest)))
    session.commit()
    built = []
    for day in days_to_build(latest_due=latest, earliest_stored=earliest, stored=stored):
        if ensure_built(session, day=day, settings=settings, now=now, queue_mail=True)[1]:
            built.append(day)
    return built


def get_report(session: Session, *, day: dt.date) -> DailyReport:
    """The stored report of ``day`` (or ``ReportNotFound``)."""
    report = _find(session, day)
    if report is None:
        raise ReportNotFound(f"no report is stored for {day.isoformat()}")
    return report


def _find(session: Session, day: dt.date) -> DailyReport | None:
    return session.scalars(select(DailyReport).where(DailyReport.day == day)
                           .execution_options(populate_existing=True)).one_or_none()


def _mark(session: Session, *, day: dt.date, resends: int, **values: Any) -> None:
    """Record how the email of resend ``resends`` went, unless a later one replaced it."""
    session.execute(update(DailyReport)
                    .where(DailyReport.day == day, DailyReport.resends == resends)
                    .values(**values))
    session.commit()
