"""Publish what a transaction wrote to the outbox, right after it commits.

An outbox row is written in the same transaction as the change that causes it, and
this process publishes it as soon as that transaction commits: the next step starts
without waiting for the relay. The step that consumes a task message marks its row in
its own transaction (``mark_consumed``); an event for other systems, which nothing of
ours consumes, is marked here once the broker confirmed it. The relay only
publishes rows nobody consumed
within ``SHOP_OUTBOX_GRACE_SECONDS``: after a crash between commit and publish, or a
broker that was down. A failed direct publish hands its rows to the relay at once,
and while the broker keeps failing, direct publishing pauses for a few seconds so a
checkout never waits on a dead broker.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session

from shop.config import get_settings
from shop.db import session_scope
from shop.messaging.models import OutboxMessage
from shop.messaging.service import DELAYS, hand_to_relay, mark_published

log = logging.getLogger(__name__)

Send = Callable[[OutboxMessage, float], None]
PENDING = "shop.outbox.pending"
PAUSE_AFTER_FAILURE = 5.0

_send: Send | None = None
_paused_until = 0.0


def install(send: Send) -> None:
    """Publish outbox rows with ``send`` after every commit in this process (idempotent)."""
    global _send
    if _send is None:
        event.listen(Session, "after_flush", _collect)
        event.listen(Session, "after_commit", _dispatch)
        event.listen(Session, "after_rollback", _forget)
    _send = send


def _collect(session: Session, _flush: object) -> None:
    new = [obj for obj in session.new if isinstance(obj, OutboxMessage)]
    if new:
        session.info.setdefault(PENDING, []).extend(new)


def _forget(session: Session) -> None:
    session.info.pop(PENDING, None)
    session.info.pop(DELAYS, None)


def _dispatch(session: Session) -> None:
    messages: list[OutboxMessage] = session.info.pop(PENDING, [])
    delays: dict[uuid.UUID, float] = session.info.pop(DELAYS, {})
    settings = get_settings()
    if not messages or _send is None or not settings.publish_on_commit:
        return
    global _paused_until
    failed = [m.id for m in messages] if time.monotonic() < _paused_until else []
    for message in messages if not failed else []:
        try:
            _send(message, delays.get(message.id, 0.0))
        except Exception as exc:
            log.warning("direct publish of %s failed (%s); the relay will send it",
                        message.id, exc)
            _paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
            failed = [m.id for m in messages[messages.index(message):]]
            break
    events = [m.id for m in messages if m.kind == "event" and m.id not in failed]
    if failed or events:
        with session_scope() as follow_up:
            if events:
                mark_published(follow_up, message_ids=events)
            if failed:
                hand_to_relay(follow_up, message_ids=failed, grace=settings.relay_grace)
            follow_up.commit()
