"""Prometheus metrics of the whole shop (``prometheus-client``).

The API serves ``GET /metrics``; a worker serves its own on ``SHOP_METRICS_PORT``. A
process whose environment sets ``PROMETHEUS_MULTIPROC_DIR`` (a worker's prefork
children, several API processes) keeps its values in files there, and whoever serves
the port adds them all up: give each worker (or API) process group its own empty
directory (a worker given none makes its own, see ``worker_multiproc_dir``; one whose
metrics already count in memory refuses to start). The API counts its requests by
route template (``shop.web.http_metrics``). Counters that say something about an order
are counted only once the transaction that did it commits (``on_commit``). The outbox's
backlog and the age of its oldest unpublished row are read from the database when scraped.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
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
    values,
)
from prometheus_client.registry import REGISTRY, Collector
from sqlalchemy import event
from sqlalchemy.orm import Session

from shop.config import get_settings

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def worker_multiproc_dir(argv: list[str]) -> str | None:
    """Give a Celery worker that serves ``SHOP_METRICS_PORT`` without
    ``PROMETHEUS_MULTIPROC_DIR`` a directory of its own (removed when it exits).

    Without one, its prefork children would count in their own memory and the port
    (served by the main process) would show nothing they did. prometheus_client decides
    where values live when it is imported (Celery's command may import it first, for
    Flower's plugin), so its choice is made again here, before this module creates a
    single metric. Returns the directory it made, if any."""
    if not argv or "celery" not in argv[0] or "worker" not in argv[1:]:
        return None  # `celery … worker` (its script, or `python -m celery`) only; asked
        #              first, so no other process reads its settings on import
    if os.environ.get(MULTIPROC_DIR) or not get_settings().metrics_port:
        return None
    made = tempfile.mkdtemp(prefix="shop-worker-metrics-")
    os.environ[MULTIPROC_DIR] = made
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # not a pool child that happens to run atexit
            shutil.rmtree(made, ignore_errors=True)

    atexit.register(remove)
    return made


worker_multiproc_dir(sys.argv)

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
WAREHOUSE_MESSAGES = Counter("shop_warehouse_messages", "Warehouse messages handled, by kind "
                             "and outcome (applied, parked, duplicate, dead_letter, retry)",
                             ["kind", "outcome"])
UNITS_SHIPPED = Counter("shop_units_shipped", "Units that left the shelf in a shipment")
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


def in_files() -> bool:
    """Whether this process counts in ``PROMETHEUS_MULTIPROC_DIR`` (as it must if other
    processes, a prefork pool's children, are to be added up by whoever serves)."""
    return values.ValueClass is not values.MutexValue


def serve(port: int) -> Any:
    """Serve this process group's metrics on ``port`` (a worker's main process)."""
    server, _thread = start_http_server(port, registry=registry())
    return server
