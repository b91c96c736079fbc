"""Prometheus metrics of the whole shop (``prometheus-client``).

The API serves ``GET /metrics``; a worker serves its own on ``SHOP_METRICS_PORT``. A
process whose environment sets ``PROMETHEUS_MULTIPROC_DIR`` (a worker's prefork
children, several API processes) keeps its values in files there, and whoever serves
the port adds them all up: give each worker (or API) process group its own empty
directory. Counters that say something about an order are counted only once the
transaction that did it commits (``on_commit``). The outbox's backlog and the age of
its oldest unpublished row are read from the database when scraped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.registry import REGISTRY, Collector
from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

ORDERS_PLACED = Counter("shop_orders_placed", "Orders accepted at checkout")
ORDERS_CONFIRMED = Counter("shop_orders_confirmed", "Orders confirmed (paid, stock held)")
ORDERS_FAILED = Counter("shop_orders_failed", "Orders failed, by step and reason",
                        ["step", "reason"])
ORDERS_CANCELLED = Counter("shop_orders_cancelled", "Orders cancelled by an admin")
STEP_SECONDS = Histogram("shop_step_duration_seconds", "Time one task run took",
                         ["task"], buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
PROVIDER_SECONDS = Histogram("shop_provider_call_duration_seconds",
                             "Time one payment-provider call took", ["operation", "outcome"],
                             buckets=(.01, .05, .1, .25, .5, 1, 2, 5, 10))
TASK_RETRIES = Counter("shop_task_retries", "Task runs that will be tried again",
                       ["task", "why"])
DEAD_LETTERS = Counter("shop_dead_letters", "Messages rejected to the dead-letter queue",
                       ["task"])
WEBHOOKS = Counter("shop_webhook_events", "Provider webhook events handled",
                   ["type", "outcome"])
REPORT_RUNS = Counter("shop_report_runs", "Daily report runs", ["outcome"])
RECONCILE_MENDS = Counter("shop_reconcile_mends", "What reconciliation mended or left",
                          ["mend"])
RELEASE_FAILURES = Counter("shop_payment_release_failures",
                           "Voids or refunds that ran out of attempts (left to reconcile)")
PROVIDER_AUTH_ERRORS = Counter("shop_payment_provider_auth_errors",
                               "Provider calls refused for the API key (an operator alarm)")

HTTP_REQUESTS = Counter("shop_http_requests", "HTTP requests answered, by method, route "
                        "template (`/v1/orders/{order_id}`, never the raw path) and status",
                        ["method", "route", "status"])
HTTP_SECONDS = Histogram("shop_http_request_duration_seconds",
                         "Time the API took to answer one request, by method and route",
                         ["method", "route"],
                         buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))

PROVIDER_BUDGET_HEADROOM = Gauge(
    "shop_provider_budget_headroom", "Calls the shared provider budget could still make at once "
    "(tokens left after this process's last call)", ["bucket"], multiprocess_mode="mostrecent")

PENDING = "shop.metrics.pending"


def on_commit(session: Session, count: Callable[[], None]) -> None:
    """Count ``count`` once the session's transaction commits (never if it rolls back)."""
    session.info.setdefault(PENDING, []).append(count)


@event.listens_for(Session, "after_commit")
def _counted(session: Session) -> None:
    for count in session.info.pop(PENDING, []):
        count()


@event.listens_for(Session, "after_rollback")
def _dropped(session: Session) -> None:
    session.info.pop(PENDING, None)


def registry(*, extra: Collector | None = None) -> CollectorRegistry:
    """What to serve: this process's metrics, or all of its group's in multiprocess mode,
    and ``extra`` (a collector read when scraped, registered once)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        served = CollectorRegistry()
        multiprocess.MultiProcessCollector(served)  # type: ignore[no-untyped-call]
    else:
        served = REGISTRY
    if extra is not None and not any(type(c) is type(extra)
                                     for c in getattr(served, "_collector_to_names", {})):
        served.register(extra)
    return served


def exposition(*, extra: Collector | None = None) -> bytes:
    return generate_latest(registry(extra=extra))


def serve(port: int) -> Any:
    """Serve this process group's metrics on ``port`` (a worker's main process)."""
    server, _thread = start_http_server(port, registry=registry())
    return server
