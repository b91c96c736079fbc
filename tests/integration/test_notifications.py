"""The once-only email ledger against a real database and a real SMTP server."""

from __future__ import annotations

import datetime as dt
import uuid
from email.message import EmailMessage
from typing import Any

import pytest
from jinja2 import UndefinedError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shop.db import get_sessionmaker, utcnow
from shop.notifications.mailer import MailPermanentError, MailTransientError, SmtpMailer
from shop.notifications.models import Notification
from shop.notifications.service import (
    NotificationInProgress,
    message_id_for,
    send_notification,
)
from tests.factories.orders import OrderFactory
from tests.fixtures.smtp import SmtpServer, free_port

TEMPLATE = "notifications/order_confirmation"


class SimulatedCrash(Exception):
    """The worker died after the server took the message, before it was marked sent."""


class CrashAfterSend:
    def __init__(self, inner: SmtpMailer) -> None:
        self.inner = inner

    def send(self, message: EmailMessage) -> None:
        self.inner.send(message)
        raise SimulatedCrash


def context_for(order_id: uuid.UUID | str) -> dict[str, Any]:
    return {
        "order": {
            "id": str(order_id), "name": "Ada Lovelace", "email": "ada@example.com",
            "currency": "USD", "subtotal": 3000, "total": 3000,
            "lines": [{"sku": "MUG-BLUE", "name": "Blue mug", "quantity": 2,
                       "unit_price": 1500, "line_total": 3000}],
            "shipping_address": {"line1": "1 Main St", "city": "London",
                                 "postal_code": "N1 9GU", "country": "GB"},
        }
    }


def send(session: Session, mailer: Any, *, key: str = "order_confirmation:1",
         order_id: uuid.UUID | None = None, recipients: list[str] | None = None,
         lease_seconds: float = 120) -> bool:
    return send_notification(
        session, key=key, kind="order_confirmation", order_id=order_id,
        recipients=recipients or ["ada@example.com"], template=TEMPLATE,
        context=context_for(order_id or "A-1"), mailer=mailer, sender="shop@localhost",
        lease_seconds=lease_seconds,
    )


def ledger(session: Session, key: str = "order_confirmation:1") -> Notification:
    row = session.scalars(
        select(Notification).where(Notification.key == key)
        .execution_options(populate_existing=True)
    ).one()
    session.commit()
    return row


def expire_claim(session: Session, key: str = "order_confirmation:1") -> None:
    session.execute(
        update(Notification).where(Notification.key == key)
        .values(claimed_at=utcnow() - dt.timedelta(minutes=10))
    )
    session.commit()


def test_same_key_twice_delivers_exactly_one_email(
    session: Session, smtp_server: SmtpServer
) -> None:
    order = OrderFactory()
    mailer = SmtpMailer(smtp_server.url)
    key = f"order_confirmation:{order.id}"

    assert send(session, mailer, key=key, order_id=order.id) is True
    assert send(session, mailer, key=key, order_id=order.id) is False

    [message] = smtp_server.wait_for(1)
    assert len(smtp_server.messages) == 1
    assert message["Message-ID"] == message_id_for(key)
    assert str(order.id) in message["Subject"]
    assert smtp_server.received[0].rcpt_tos == ("ada@example.com",)
    row = ledger(session, key)
    assert (row.status, row.attempts, row.order_id) == ("sent", 1, order.id)
    assert row.sent_at is not None
    assert row.sent_at.tzinfo is not None


def test_second_call_within_the_lease_is_in_progress_and_holds_no_lock(
    session: Session, smtp_server: SmtpServer
) -> None:
    inner = SmtpMailer(smtp_server.url)
    seen: list[BaseException] = []

    class ConcurrentDuplicate:
        """While the first send is on the wire, a second worker tries the same key."""

        def send(self, message: EmailMessage) -> None:
            with get_sessionmaker()() as other:
                with pytest.raises(NotificationInProgress) as info:
                    send(other, inner)
                seen.append(info.value)
            inner.send(message)

    assert send(session, ConcurrentDuplicate()) is True
    assert len(seen) == 1
    assert len(smtp_server.wait_for(1)) == 1
    assert ledger(session).attempts == 1


def test_crash_after_send_resends_with_the_same_message_id_after_the_lease(
    session: Session, smtp_server: SmtpServer
) -> None:
    mailer = SmtpMailer(smtp_server.url)
    with pytest.raises(SimulatedCrash):
        send(session, CrashAfterSend(mailer))
    assert ledger(session).status == "sending"

    with pytest.raises(NotificationInProgress):
        send(session, mailer)
    expire_claim(session)
    assert send(session, mailer) is True

    first, second = smtp_server.wait_for(2)
    assert first["Message-ID"] == second["Message-ID"] == message_id_for("order_confirmation:1")
    row = ledger(session)
    assert (row.status, row.attempts) == ("sent", 2)
    assert send(session, mailer) is False
    assert len(smtp_server.messages) == 2


def test_server_down_is_transient_and_the_ledger_allows_a_retry(
    session: Session, smtp_server: SmtpServer
) -> None:
    down = SmtpMailer(f"smtp://127.0.0.1:{free_port()}", timeout=5)
    with pytest.raises(MailTransientError):
        send(session, down)
    row = ledger(session)
    assert (row.status, row.claimed_at, row.attempts) == ("sending", None, 1)

    assert send(session, SmtpMailer(smtp_server.url)) is True
    assert len(smtp_server.wait_for(1)) == 1
    row = ledger(session)
    assert (row.status, row.attempts) == ("sent", 2)


def test_recipient_refused_with_550_is_permanent(
    session: Session, smtp_server: SmtpServer
) -> None:
    smtp_server.refuse("nobody@example.com")
    with pytest.raises(MailPermanentError, match="550"):
        send(session, SmtpMailer(smtp_server.url), recipients=["nobody@example.com"])
    assert smtp_server.messages == []
    row = ledger(session)
    assert (row.status, row.claimed_at) == ("sending", None)


def test_a_template_error_leaves_no_ledger_row(
    session: Session, smtp_server: SmtpServer
) -> None:
    with pytest.raises(UndefinedError, match="has no attribute"):
        send_notification(
            session, key="k", kind="order_confirmation", order_id=None,
            recipients=["ada@example.com"], template=TEMPLATE,
            context={"order": {"id": "x"}}, mailer=SmtpMailer(smtp_server.url),
            sender="shop@localhost",
        )
    assert session.scalars(select(Notification)).all() == []
    session.commit()


def test_pending_changes_of_the_caller_are_refused(
    session: Session, smtp_server: SmtpServer
) -> None:
    OrderFactory().name = "changed but not committed"
    with pytest.raises(RuntimeError, match="pending changes"):
        send(session, SmtpMailer(smtp_server.url))
    session.rollback()
    assert smtp_server.messages == []
