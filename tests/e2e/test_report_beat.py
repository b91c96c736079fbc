"""A real beat, started after the report time, builds and mails the missed report once:
``celery beat``, a worker and the relay as processes, on PostgreSQL, RabbitMQ (a fresh
vhost) and an aiosmtpd server."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from shop.config import get_settings
from shop.db import build_engine, session_scope
from shop.reports.models import DailyReport
from tests.factories import bound_to
from tests.fixtures.reporting import ShopDay
from tests.fixtures.smtp import SmtpServer
from tests.fixtures.stack import Stack, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]


@pytest.fixture
def report_stack(pg_url: str, vhost_url: str, smtp_server: SmtpServer, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """The shop on real services; the report is due at 00:00 UTC, so by now, always."""
    from shop.migrate import upgrade

    env_vars = {
        "SHOP_DATABASE_URL": pg_url, "SHOP_BROKER_URL": vhost_url,
        "SHOP_PAYMENT_PROVIDER": "dummy", "SHOP_SMTP_URL": smtp_server.url,
        "SHOP_REPORT_RECIPIENTS": "boss@example.com", "SHOP_TIMEZONE": "UTC",
        "SHOP_REPORT_TIME": "00:00", "SHOP_DATA_DIR": str(tmp_path / "var"),
    }
    for key, value in env_vars.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    upgrade(pg_url)
    env = {**os.environ, **env_vars}
    env.pop("PYTHONWARNINGS", None)
    logs = tmp_path / "logs"
    logs.mkdir()
    running = Stack(env=env, log_dir=logs)
    yield running
    running.stop_all()


def start_beat(stack: Stack, tmp_path: Path) -> None:
    stack.start("beat", "-m", "celery", "-A", "shop", "beat", "-l", "info",
                "-s", str(tmp_path / "celerybeat-schedule"))


def due_checks_done(stack: Stack) -> int:
    """How many of beat's report checks the worker has finished (from its log)."""
    log = (stack.log_dir / "worker.log").read_text(errors="replace")
    return len(re.findall(r"Task shop\.reports\.build_due_reports\[[^\]]+\] succeeded", log))


def reports_mailed(smtp_server: SmtpServer) -> list[EmailMessage]:
    """The report emails (the sale's own confirmation email goes out too)."""
    return [m for m in smtp_server.messages
            if str(m["Subject"]).startswith("Daily sales report")]


def test_a_beat_started_after_report_time_builds_and_mails_the_missed_report_once(
        pg_url: str, report_stack: Stack, smtp_server: SmtpServer, tmp_path: Path) -> None:
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    engine = build_engine(pg_url)
    with Session(engine) as session, bound_to(session):
        shop = ShopDay(session)
        shop.product("HAT", price=2000, currency="EUR")
        shop.sell({"HAT": 2}, placed=dt.datetime.combine(yesterday, dt.time(12), tzinfo=dt.UTC))
    engine.dispose()
    report_stack.start_worker("worker")
    report_stack.start_relay()

    start_beat(report_stack, tmp_path)  # long after 00:00: yesterday's report is due

    [message] = wait_until(lambda: reports_mailed(smtp_server), timeout=90,
                           what="the report email", stack=report_stack)
    assert message["Subject"].startswith(f"Daily sales report: {yesterday:%A} {yesterday.day} ")
    with session_scope() as session:
        report = session.scalars(select(DailyReport)).one()
        assert (report.day, report.data["money"]["EUR"]["gross"]) == (yesterday, 4000)
        assert report.mailed_at is not None
        built_at = report.created_at

    # Beat restarts (and asks again at once); its minutely check keeps asking too.
    report_stack.kill("beat", signal.SIGTERM)
    checks = due_checks_done(report_stack)
    start_beat(report_stack, tmp_path)
    wait_until(lambda: due_checks_done(report_stack) > checks, timeout=60,
               what="the restarted beat's report check", stack=report_stack)

    assert len(reports_mailed(smtp_server)) == 1
    with session_scope() as session:
        assert [(r.day, r.created_at) for r in session.scalars(select(DailyReport))] == [
            (yesterday, built_at)]
