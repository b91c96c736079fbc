"""Admin routes of the reports domain: build or resend a day's report, and read it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from shop.config import Settings
from shop.db import utcnow
from shop.exceptions import BusyError
from shop.notifications.mailer import build_mailer
from shop.reports import rendering, service
from shop.reports.models import DailyReport
from shop.reports.schemas import DailyReportIn, DailyReportOut, MailOut
from shop.web.deps import AdminDep, SessionDep, SettingsDep
from shop.web.errors import (
    ADMIN_RESPONSES,
    ERROR_RESPONSES,
    Conflict,
    ErrorOut,
    FieldProblem,
    InvalidRequest,
    NotFound,
)

router = APIRouter(prefix="/admin/reports", tags=["admin"],
                   responses={**ERROR_RESPONSES, **ADMIN_RESPONSES})

NOT_STORED: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No report is stored for that day"}}
# The page shows only inline styles: nothing else may load or run.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff"}


def _out(report: DailyReport, settings: Settings, *, built: bool = False) -> DailyReportOut:
    return DailyReportOut(
        day=report.day, timezone=report.timezone, created_at=report.created_at,
        built_now=built, data=report.data,
        mail=MailOut(status=service.mail_status(report, settings),
                     mailed_at=report.mailed_at, resends=report.resends,
                     error=report.mail_error))


@router.post("/daily", response_model=DailyReportOut, responses={
    200: {"description": "Already stored: not rebuilt (mailed if it was not)"},
    201: {"model": DailyReportOut, "description": "Built now (and mailed)"},
    409: {"model": ErrorOut, "description": "A resend is being mailed right now"}})
def post_daily(body: DailyReportIn, session: SessionDep, settings: SettingsDep,
               response: Response, _: AdminDep) -> DailyReportOut:
    """Build the day's report unless stored, and mail it unless mailed; ``resend`` mails
    the stored report again. An email that fails leaves it stored with ``mail.error``."""
    try:
        result = service.run_daily_report(session, day=body.date, resend=body.resend,
                                      settings=settings, mailer=build_mailer(settings),
                                      now=utcnow())
    except service.DayRefused as exc:
        raise InvalidRequest([FieldProblem("date", str(exc), "day_not_over")]) from None
    except service.NoRecipients as exc:
        raise InvalidRequest([FieldProblem("resend", str(exc), "no_recipients")]) from None
    except BusyError:  # another worker is mailing this very report
        if body.resend:
            raise Conflict("this report is being mailed right now; try again shortly") from None
        return _out(service.get_report(session, day=body.date), settings)
    response.status_code = 201 if result.built else 200
    return _out(result.report, settings, built=result.built)


@router.get("/daily/{date}.html", response_class=HTMLResponse, responses={
    200: {"content": {"text/html": {}}, "description": "The report as its email shows it"},
    **NOT_STORED})
def get_daily_page(date: dt.date, session: SessionDep, _: AdminDep) -> HTMLResponse:
    """The stored report as a page for the browser (the email's HTML)."""
    report = _stored(session, date)
    return HTMLResponse(rendering.page(report.data), headers=PAGE_HEADERS)


@router.get("/daily/{date}", response_model=DailyReportOut, responses=NOT_STORED)
def get_daily(date: dt.date, session: SessionDep, settings: SettingsDep,
              _: AdminDep) -> DailyReportOut:
    """The stored report of a local day, as JSON; never builds one."""
    return _out(_stored(session, date), settings)


def _stored(session: SessionDep, day: dt.date) -> DailyReport:
    try:
        return service.get_report(session, day=day)
    except service.ReportNotFound as exc:
        raise NotFound(str(exc)) from None
