"""The shop on a PostgreSQL primary and its standby (``tests/fixtures/pg_standby.py``):
one multi-host URL with ``target_session_attrs=read-write`` follows the primary through
a failover, and a commit that must land after an effect outside the database (an email
that left) waits for the new primary instead of leaving the effect to be repeated."""

from __future__ import annotations

import threading
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import func, select, text

import shop.models  # noqa: F401  (registers every table)
from shop.config import get_settings
from shop.db import Base, build_engine, get_sessionmaker, reset_engine
from shop.notifications.models import Notification
from shop.notifications.service import SENT, send_notification
from tests.fixtures.pg_standby import PgPair
from tests.integration.test_notifications import TEMPLATE, context_for

pytestmark = pytest.mark.postgres


def test_the_multi_host_url_follows_the_primary_through_a_failover(pg_pair: PgPair) -> None:
    engine = build_engine(pg_pair.url())
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (n int)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
            assert conn.execute(text("SELECT inet_server_port()")).scalar() == \
                pg_pair.primary.port
        pg_pair.stop_primary()
        pg_pair.promote()
        with engine.begin() as conn:  # the pooled connection is dead: pinged, replaced
            conn.execute(text("INSERT INTO t VALUES (2)"))
            assert conn.execute(text("SELECT inet_server_port()")).scalar() == \
                pg_pair.standby.port
            # synchronous replication: what the old primary acknowledged is all there
            assert conn.execute(text("SELECT array_agg(n ORDER BY n) FROM t")).scalar() == \
                [1, 2]
    finally:
        engine.dispose()


class FailoverAfterSend:
    """A mailer whose server accepts the email just as the database's primary dies;
    the standby is promoted ``promote_after`` seconds later."""

    def __init__(self, pair: PgPair, promote_after: float = 1.5) -> None:
        self.pair = pair
        self.promote_after = promote_after
        self.sent: list[EmailMessage] = []
        self.promoter: threading.Timer | None = None

    def send(self, message: EmailMessage) -> None:
        self.sent.append(message)
        self.pair.stop_primary()
        self.promoter = threading.Timer(self.promote_after, self.pair.promote)
        self.promoter.start()


def test_an_email_that_left_as_the_database_failed_over_is_marked_sent_once(
        pg_pair: PgPair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_DATABASE_URL", pg_pair.url())
    get_settings.cache_clear()
    reset_engine()
    engine = build_engine(pg_pair.url())
    Base.metadata.create_all(engine)
    engine.dispose()
    mailer = FailoverAfterSend(pg_pair)
    key = "order_confirmation:failover"

    def send(session: Any) -> bool:
        return send_notification(
            session, key=key, kind="order_confirmation", order_id=None,
            recipients=["ada@example.com"], template=TEMPLATE, context=context_for("F-1"),
            mailer=mailer, sender="shop@localhost")

    with get_sessionmaker()() as session:
        assert send(session) is True  # marked sent on the new primary, not given up
    assert mailer.promoter is not None
    mailer.promoter.join()
    with get_sessionmaker()() as session:
        row = session.scalars(select(Notification).where(Notification.key == key)).one()
        assert (row.status, row.attempts) == (SENT, 1)
        assert session.scalar(text("SELECT inet_server_port()")) == pg_pair.standby.port
        assert send(session) is False  # a redelivered task sends nothing
        assert session.scalar(select(func.count()).select_from(Notification)) == 1
    assert len(mailer.sent) == 1
    reset_engine()
