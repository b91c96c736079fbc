"""``GET /healthz``: is the database there, and the broker? ``GET /livez``: the process.

Anonymous callers learn what is down, never why: exception text goes to the log.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from kombu.connection import Connection
from sqlalchemy import text

from shop.celery import transport_options
from shop.config import get_settings
from shop.db import session_scope
from shop.messaging.service import pending_count

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


def _database() -> tuple[bool, Any]:
    try:
        with session_scope() as session:
            session.execute(text("SELECT 1"))
            return True, {"outbox_pending": pending_count(session)}
    except Exception:
        log.exception("health check: the database does not answer")
        return False, "down"


def _broker() -> tuple[bool, Any]:
    try:
        settings = get_settings()
        options = transport_options(settings)
        with Connection(settings.broker_url, transport_options=options,
                        connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return True, "ok"
    except Exception:
        log.exception("health check: the broker does not answer")
        return False, "down"


@router.get("/livez", responses={200: {"description": "The process answers"}})
def livez() -> dict[str, str]:
    """200 while the process answers (no dependency is checked)."""
    return {"status": "ok"}


@router.get("/healthz", responses={
    200: {"description": "Database and broker answer"},
    503: {"description": "Something is down; `down` names it"},
})
def healthz() -> JSONResponse:
    """200 when the database and broker answer; 503 naming what is down otherwise."""
    db_ok, db = _database()
    broker_ok, broker = _broker()
    ok = db_ok and broker_ok
    body = {"status": "ok" if ok else "degraded", "database": db, "broker": broker}
    if not ok:
        body["down"] = [name for name, up in (("database", db_ok), ("broker", broker_ok))
                        if not up]
    return JSONResponse(body, status_code=200 if ok else 503)
