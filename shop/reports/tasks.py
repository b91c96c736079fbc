"""The report's tasks: ids (a day) in, one use case called, errors mapped by ``run_step``.

A failed email is retried with backoff like any transient error; when the attempts
run out (or the server refuses for good) the report stays stored, marked unsent, for
an admin to resend.
"""

from __future__ import annotations

import datetime as dt

from celery import Task, shared_task
from sqlalchemy.orm import Session

from shop.config import get_settings
from shop.db import utcnow
from shop.messaging.runner import run_step, task_options
from shop.notifications.mailer import build_mailer
from shop.reports import service
from shop.reports.schedule import BUILD_DUE_TASK, DAILY_REPORT_TASK

# A report of a large shop's day takes seconds; give it room beyond the default limits.
LIMITS = {"soft_time_limit": 240, "time_limit": 270}


@shared_task(name=BUILD_DUE_TASK, **task_options(**LIMITS))
def build_due_reports_task(self: Task) -> None:
    settings = get_settings()
    run_step(self, lambda s: service.build_due_reports(s, settings=settings, now=utcnow()),
             lambda _s, _e: None)


@shared_task(name=DAILY_REPORT_TASK, **task_options(**LIMITS))
def daily_report_task(self: Task, day: str, resend: bool = False) -> None:
    settings = get_settings()
    local_day = dt.date.fromisoformat(day)

    def give_up(session: Session, exc: Exception) -> None:
        service.record_mail_failure(session, day=local_day, error=f"{type(exc).__name__}: {exc}")

    def work(session: Session) -> None:
        result = service.run_daily_report(session, day=local_day, resend=resend, settings=settings,
                                      mailer=build_mailer(settings), now=utcnow())
        if result.mail_failure is not None:  # transient: retried; permanent: given up
            raise result.mail_failure

    run_step(self, work, give_up)
