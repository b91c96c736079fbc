"""The once-only email ledger: claim a row, send outside any transaction, mark it sent.

The task that sends may run more than once (at-least-once delivery); the ledger
makes the email go out at most once in practice. Each call is a use case and
commits for itself. The only window for a duplicate is a crash after the server
accepted the message and before ``sent`` is committed: after the lease expires the
email is sent again, with the same Message-ID, so mail clients can fold the copies.
A database that goes away in that window (a dropped connection, a failover to the
standby) is waited for, up to ``shop.db.COMMIT_PATIENCE``, instead.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.trace import SpanKind
from sqlalchemy import Integer, cast, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shop import tracing
from shop.db import commit_surely, db_now, utcnow
from shop.exceptions import BusyError
from shop.notifications.mailer import Attachment, Mailer, MailError, compose
from shop.notifications.models import Notification
from shop.notifications.rendering import render_email

SENDING = "sending"
SENT = "sent"


class NotificationInProgress(BusyError):
    """Another worker holds a live claim on this notification; try again later."""

    def __init__(self, key: str) -> None:
        super().__init__(f"notification {key!r} is being sent by another worker")
        self.key = key


def message_id_for(key: str) -> str:
    """The Message-ID for a ledger key: stable, so a resend carries the same id."""
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@shop>"


def send_notification(
    session: Session,
    *,
    key: str,
    kind: str,
    order_id: uuid.UUID | None,
    recipients: list[str],
    template: str,
    context: Mapping[str, Any],
    mailer: Mailer,
    sender: str,
    lease_seconds: float = 120,
    on_sent: Callable[[], None] | None = None,
    attachments: Sequence[Attachment] = (),
) -> bool:
    """Send the email for ``key`` unless it was sent; True if this call sent it.

    ``on_sent`` runs in the transaction that marks the email sent (e.g. to put it on
    an order's timeline), so both land in one commit.
    """
    if not recipients:
        raise ValueError("a notification needs at least one recipient")
    if session.new or session.dirty or session.deleted:
        # The claim commits (or, on a conflict, rolls back) the whole session.
        raise RuntimeError("send_notification needs a session without pending changes")
    # Rendered before the claim: a template error leaves no row, and nothing
    # (lazy loads included) touches the session between the claim and the send.
    rendered = render_email(template, context)
    message_id = _claim(
        session, key=key, kind=kind, order_id=order_id, recipients=recipients,
        lease_seconds=lease_seconds,
    )
    if message_id is None:
        return False
    try:
        with tracing.span("email.send", kind=SpanKind.CLIENT, **{
                "shop.email.kind": kind, "shop.order_id": str(order_id) if order_id else None}):
            mailer.send(compose(
                sender=sender, recipients=recipients, subject=rendered.subject,
                text=rendered.text, html=rendered.html, message_id=message_id,
                attachments=attachments,
            ))
    except MailError as exc:
        _release(session, key=key, error=exc)
        raise
    # Any other exception keeps the claim: whether the email left is unknown, so
    # only the lease's expiry allows a resend.
    _mark_sent(session, key=key, on_sent=on_sent)
    return True


def _claim(
    session: Session,
    *,
    key: str,
    kind: str,
    order_id: uuid.UUID | None,
    recipients: list[str],
    lease_seconds: float,
) -> str | None:
    """Claim the row for ``key`` and return its Message-ID; None if already sent."""
    session.add(
        Notification(
            key=key, kind=kind, order_id=order_id, recipients=", ".join(recipients),
            message_id=message_id_for(key), status=SENDING, attempts=1, claimed_at=db_now(),
        )
    )
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        return _reclaim(session, key=key, lease_seconds=lease_seconds, error=exc)
    return message_id_for(key)


def _reclaim(
    session: Session, *, key: str, lease_seconds: float, error: IntegrityError
) -> str | None:
    """Take over an existing row whose claim was released or has expired."""
    row = session.scalars(
        select(Notification)
        .where(Notification.key == key)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if row is None:  # not our unique key: e.g. an unknown order id
        session.rollback()
        raise error
    if row.status == SENT:
        session.commit()
        return None
    message_id = session.execute(
        update(Notification)
        .where(
            Notification.key == key,
            Notification.status == SENDING,
            or_(Notification.claimed_at.is_(None),
                Notification.claimed_at < db_now(-lease_seconds)),
        )
        .values(claimed_at=db_now(), attempts=cast(Notification.attempts + 1, Integer))
        .returning(Notification.message_id)
    ).scalar()
    session.commit()
    if message_id is None:
        raise NotificationInProgress(key)
    return str(message_id)


def _release(session: Session, *, key: str, error: MailError) -> None:
    """Give the claim back after a send that certainly failed, so a retry (or an admin's
    resend, after a permanent refusal) may go now; the reason is kept for admins."""
    session.execute(
        update(Notification)
        .where(Notification.key == key, Notification.status == SENDING)
        .values(claimed_at=None, last_error=str(error)[:2000])
    )
    session.commit()


def _mark_sent(session: Session, *, key: str, on_sent: Callable[[], None] | None) -> None:
    """Record the email as sent, through a dropped connection or a database failover
    (``commit_surely``): left unrecorded, it would be sent again once the lease expires.
    Repeated after a commit whose answer was lost, it marks nothing and records nothing."""
    def write() -> None:
        marked = session.execute(
            update(Notification)
            .where(Notification.key == key, Notification.status == SENDING)
            .values(status=SENT, sent_at=utcnow())
            .returning(Notification.key)
        ).scalar()
        if marked is not None and on_sent is not None:
            on_sent()

    commit_surely(session, write)
