"""Operations routes: ``GET /readyz`` (readiness, for load balancers: the database
answers), ``GET /healthz`` (health, for people and alerts: the database, the broker and
the outbox's lag), ``GET /livez`` (the process answers) and ``GET /metrics`` (Prometheus).

Readiness asks only what checkout needs. A checkout commits its order and its outbox
row in one transaction, so while RabbitMQ or the relay is down the outbox holds the
order and the API keeps taking them; a load balancer that took replicas out of the
pool over the broker would turn a delay into an outage. ``/healthz`` still says 503
then, naming the broker, for whoever must fix it.

Anonymous callers learn what is down, never why: exception text goes to the log.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from kombu.connection import Connection
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from shop import metrics
from shop.config import get_settings
from shop.db import session_scope
from shop.messaging.broker import transport_options
from shop.messaging.service import OutboxCollector, outbox_lag

router = APIRouter(tags=["health"])
OUTBOX_LAG_ALLOWED = 60.0  # seconds beyond the relay's grace
RETRY_AFTER = "5"  # seconds, on a 503 from /readyz
log = logging.getLogger(__name__)


def _database() -> tuple[bool, Any, float]:
    """Whether the database answers, what the outbox holds, and its oldest row's age."""
    try:
        with session_scope() as session:
            session.execute(text("SELECT 1"))
            pending, oldest = outbox_lag(session)
            return True, {"outbox_pending": pending}, oldest
    except Exception:
        log.exception("health check: the database does not answer")
        return False, "down", 0.0


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


@router.get("/readyz", responses={
    200: {"description": "The database answers: this replica can take checkouts"},
    503: {"description": "The database does not answer; `Retry-After` says when to ask again"},
})
def readyz() -> JSONResponse:
    """200 when the database answers, 503 with ``Retry-After`` when it does not. The
    broker is never asked: checkout needs only the database (the outbox holds messages)."""
    try:
        with session_scope() as session:
            session.execute(text("SELECT 1"))
    except Exception:
        log.exception("readiness check: the database does not answer")
        return JSONResponse({"status": "unavailable", "down": ["database"]}, status_code=503,
                            headers={"Retry-After": RETRY_AFTER})
    return JSONResponse({"status": "ok"})


@router.get("/healthz", responses={
    200: {"description": "Database and broker answer"},
    503: {"description": "Something is down; `down` names it"},
})
def healthz() -> JSONResponse:
    """200 when the database and broker answer and the outbox keeps up; 503 naming what
    is down otherwise (``outbox``: a message has waited longer than the relay should
    ever let one wait, so no relay is running or the broker refuses it)."""
    db_ok, db, oldest = _database()
    broker_ok, broker = _broker()
    outbox_ok = oldest <= get_settings().relay_grace + OUTBOX_LAG_ALLOWED
    checks = (("database", db_ok), ("broker", broker_ok), ("outbox", outbox_ok))
    ok = all(up for _, up in checks)
    body = {"status": "ok" if ok else "degraded", "database": db, "broker": broker,
            "outbox": {"oldest_seconds": round(oldest, 1)}}
    if not ok:
        body["down"] = [name for name, up in checks if not up]
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response, responses={
    200: {"description": "Prometheus metrics", "content": {CONTENT_TYPE_LATEST: {}}}})
def metrics_route() -> Response:
    """Prometheus metrics of this API (all its processes, in multiprocess mode), and the
    outbox's backlog and lag."""
    return Response(metrics.exposition(extra=OutboxCollector()), media_type=CONTENT_TYPE_LATEST)
