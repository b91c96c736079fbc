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
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
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


class OutboxCollector(Collector):
    """The outbox's backlog and its oldest unpublished row's age, read when scraped."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from shop.db import session_scope
        from shop.messaging.service import outbox_lag

        backlog = GaugeMetricFamily("shop_outbox_backlog", "Outbox rows not yet published")
        age = GaugeMetricFamily("shop_outbox_oldest_age_seconds",
                                "Age of the oldest unpublished outbox row")
        try:
            with session_scope() as session:
                count, oldest = outbox_lag(session)
        except Exception:
            log.exception("metrics: the outbox could not be read")
            return
        backlog.add_metric([], float(count))
        age.add_metric([], oldest)
        yield backlog
        yield age


def registry(*, with_outbox: bool) -> CollectorRegistry:
    """What to serve: this process's metrics, or all of its group's in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        served = CollectorRegistry()
        multiprocess.MultiProcessCollector(served)  # type: ignore[no-untyped-call]
    else:
        served = REGISTRY
    if with_outbox and not any(isinstance(c, OutboxCollector)
                               for c in getattr(served, "_collector_to_names", {})):
        served.register(OutboxCollector())
    return served


def exposition(*, with_outbox: bool = True) -> bytes:
    return generate_latest(registry(with_outbox=with_outbox))


def serve(port: int) -> Any:
    """Serve this process group's metrics on ``port`` (a worker's main process)."""
    server, _thread = start_http_server(port, registry=registry(with_outbox=False))
    return server
