"""The daily report reaches management by SMTP once, with its HTML, text and CSV; again
only when a resend is asked for; and never as a different report."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from email.message import EmailMessage
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shop.config import get_settings
from shop.db import get_sessionmaker
from shop.exceptions import BusyError
from shop.notifications.mailer import SmtpMailer
from shop.notifications.models import Notification
from shop.orders.models import Order
from shop.reports import figures, service
from shop.reports.models import DailyReport
from tests.fixtures.api import ADMIN_TOKEN
from tests.fixtures.reporting import ShopDay
from tests.fixtures.smtp import SmtpServer, free_port

DAY = dt.date(2026, 3, 29)
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BOSSES = ["boss@example.com", "cfo@example.com"]
EVIL_PRODUCT = '<script>alert("mug")</script> Mug & Co'
EVIL_CUSTOMER = "<img src=x onerror=alert(1)>Eve"


class SimulatedCrash(Exception):
    """The process died at this point."""


class CrashAfterSend:
    """The server takes the message, then the worker dies before recording it."""

    def __init__(self, inner: SmtpMailer) -> None:
        self.inner = inner

    def send(self, message: EmailMessage) -> None:
        self.inner.send(message)
        raise SimulatedCrash


@pytest.fixture
def report_env(smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> SmtpServer:
    monkeypatch.setenv("SHOP_TIMEZONE", "Europe/London")
    monkeypatch.setenv("SHOP_REPORT_RECIPIENTS", ", ".join(BOSSES))
    monkeypatch.setenv("SHOP_SMTP_URL", smtp_server.url)
    monkeypatch.setenv("SHOP_MAIL_FROM", "reports@shop.example")
    get_settings.cache_clear()
    return smtp_server


def a_day(session: Session) -> ShopDay:
    """Two sales in two currencies on DAY, one of a product whose name is HTML, and an
    order stuck since then whose customer's name is HTML (it shows in the consistency
    section)."""
    shop = ShopDay(session)
    shop.product("EVIL", price=1250, currency="GBP", name=EVIL_PRODUCT)
    shop.product("HAT", price=2000, currency="EUR", name="Sun hat")
    shop.sell({"EVIL": 2}, placed=dt.datetime(2026, 3, 29, 9, tzinfo=dt.UTC))
    shop.sell({"HAT": 1}, placed=dt.datetime(2026, 3, 29, 10, tzinfo=dt.UTC))
    stuck = shop.place({"HAT": 1}, at=dt.datetime(2026, 3, 29, 11, tzinfo=dt.UTC),
                       name=EVIL_CUSTOMER).id
    shop.stamp(stuck, placed=dt.datetime(2026, 3, 29, 11, tzinfo=dt.UTC),
               settled=dt.datetime(2026, 3, 29, 11, tzinfo=dt.UTC))
    return shop


def parts(message: EmailMessage) -> dict[str, Any]:
    html = message.get_body(preferencelist=("html",))
    text = message.get_body(preferencelist=("plain",))
    assert html is not None
    assert text is not None
    [csv] = list(message.iter_attachments())
    return {"html": html.get_content(), "text": text.get_content(),
            "csv_name": csv.get_filename(), "csv_type": csv.get_content_type(),
            "csv": csv.get_payload(decode=True)}


def post(client: TestClient, **body: Any) -> Any:
    return client.post("/admin/reports/daily", json={"date": DAY.isoformat(), **body},
                       headers=AUTH)


def run_report(resend: bool = False, mailer: Any = None) -> service.Result:
    settings = get_settings()
    with get_sessionmaker()() as session:
        return service.run_daily_report(
            session, day=DAY, resend=resend, settings=settings,
            mailer=mailer or SmtpMailer(settings.smtp_url.get_secret_value()),  # type: ignore[union-attr]
            now=dt.datetime.now(dt.UTC))


def test_the_email_arrives_with_html_text_and_csv_and_names_escaped(
        session: Session, client: TestClient, report_env: SmtpServer) -> None:
    a_day(session)

    response = post(client)

    assert response.status_code == 201, response.text
    assert response.json()["mail"]["status"] == "sent"
    [received] = report_env.received
    assert received.mail_from == "reports@shop.example"
    assert sorted(received.rcpt_tos) == BOSSES
    message = received.message
    assert message["Subject"] == "Daily sales report: Sunday 29 March 2026 (Europe/London)"
    assert message.get_content_type() == "multipart/mixed"
    email = parts(message)
    assert (email["csv_name"], email["csv_type"]) == ("sales-2026-03-29.csv", "text/csv")
    assert "25.00 GBP" in email["html"]
    assert "20.00 EUR" in email["html"]
    assert "&lt;script&gt;alert(&#34;mug&#34;)&lt;/script&gt; Mug &amp; Co" in email["html"]
    assert "&lt;img src=x onerror=alert(1)&gt;Eve" in email["html"]
    assert "<script" not in email["html"]
    assert "<img" not in email["html"]
    assert EVIL_PRODUCT in email["text"]
    assert EVIL_CUSTOMER in email["text"]
    assert f'EVIL,"{EVIL_PRODUCT.replace(chr(34), 2 * chr(34))}",GBP,1,2,25.00,2500' in (
        email["csv"].decode("utf-8-sig"))


def test_triggering_twice_sends_one_email_and_resend_sends_another(
        session: Session, client: TestClient, report_env: SmtpServer) -> None:
    a_day(session)

    first, second = post(client), post(client)

    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["built_now"] is False
    assert second.json()["data"] == first.json()["data"]
    assert len(report_env.messages) == 1

    resent = post(client, resend=True)

    assert resent.status_code == 200
    assert resent.json()["mail"] | {"mailed_at": None} == {
        "status": "sent", "mailed_at": None, "resends": 1, "error": None}
    assert len(report_env.messages) == 2
    one, two = report_env.messages
    assert one["Message-ID"] != two["Message-ID"]
    assert parts(one) == parts(two)  # the stored report, not a rebuilt one

    post(client)
    assert len(report_env.messages) == 2
    post(client, resend=True)
    assert len(report_env.messages) == 3


def test_concurrent_triggers_build_once_and_send_once(
        session: Session, report_env: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    a_day(session)
    builds: list[dt.date] = []
    real_build = figures.build

    def counted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        builds.append(kwargs["day"])
        return real_build(*args, **kwargs)

    monkeypatch.setattr(figures, "build", counted)
    results: list[service.Result] = []
    busy: list[BusyError] = []
    start = threading.Barrier(3)

    def trigger() -> None:
        start.wait()
        try:
            results.append(run_report())
        except BusyError as exc:  # the email is on its way from another trigger
            busy.append(exc)

    threads = [threading.Thread(target=trigger) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(results) + len(busy) == 3
    assert builds == [DAY]
    assert len(report_env.messages) == 1
    assert run_report().report.mailed_at is not None


def test_a_crash_after_sending_resends_the_same_email_with_the_same_message_id(
        session: Session, report_env: SmtpServer) -> None:
    a_day(session)
    real = SmtpMailer(report_env.url)

    with pytest.raises(SimulatedCrash):
        run_report(mailer=CrashAfterSend(real))
    stored = session.get(DailyReport, DAY)
    assert stored is not None
    assert stored.mailed_at is None
    session.execute(update(Notification).values(  # the ledger's claim runs out
        claimed_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)))
    session.commit()
    # Meanwhile the shop moved on: a rebuilt report would differ from the first email.
    session.execute(update(Order).values(name="Someone else"))
    session.commit()

    result = run_report(mailer=real)

    assert result.mailed
    assert not result.built
    first, second = report_env.messages
    assert first["Message-ID"] == second["Message-ID"]
    assert parts(first) == parts(second)


def test_a_crash_after_the_ledger_recorded_the_send_sends_nothing_more(
        session: Session, report_env: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    a_day(session)
    real_mark = service._mark

    def crash_before_marking(*args: Any, **values: Any) -> None:
        if values.get("mailed_at") is not None:
            raise SimulatedCrash
        real_mark(*args, **values)

    monkeypatch.setattr(service, "_mark", crash_before_marking)
    with pytest.raises(SimulatedCrash):
        run_report()
    monkeypatch.setattr(service, "_mark", real_mark)

    result = run_report()

    assert not result.mailed
    assert result.report.mailed_at is not None
    assert len(report_env.messages) == 1


def test_a_failed_smtp_server_leaves_the_report_stored_and_unsent_for_a_resend(
        session: Session, client: TestClient, report_env: SmtpServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import shop.reports.tasks as tasks

    a_day(session)
    monkeypatch.setenv("SHOP_SMTP_URL", f"smtp://127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setenv("SHOP_RETRY_MAX_ATTEMPTS", "3")
    get_settings.cache_clear()

    # Run eagerly: each retry (no countdown here) runs at once, until the attempts run out.
    tasks.daily_report_task.apply(kwargs={"day": DAY.isoformat()},
                                  task_id=str(uuid.uuid4()))

    stored = client.get(f"/admin/reports/daily/{DAY}", headers=AUTH).json()
    assert stored["mail"]["status"] == "failed"
    assert "cannot reach SMTP server" in stored["mail"]["error"]
    assert stored["data"]["money"]["GBP"]["gross"] == 2500
    assert report_env.messages == []
    attempts = session.scalars(select(Notification.attempts)
                               .where(Notification.kind == service.MAIL_KIND)).all()
    session.commit()  # SQLite: end the read, which holds the write lock
    assert attempts == [3]  # three attempts under one key: one email at most

    monkeypatch.setenv("SHOP_SMTP_URL", report_env.url)  # the server is back
    get_settings.cache_clear()
    resent = post(client, resend=True)

    assert resent.json()["mail"] == resent.json()["mail"] | {"status": "sent", "error": None,
                                                             "resends": 0}
    assert len(report_env.messages) == 1
