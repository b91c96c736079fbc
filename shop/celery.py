"""The Celery app: queues, routes, reliability settings, broker topology, beat schedule.

Reliability choices (RabbitMQ 3.10 here; see docs/delivery.md):
- acks_late + reject_on_worker_lost + prefetch 1: a message is acknowledged only
  after its task finished, and a worker killed mid-task gives it back; a task stopped
  by its hard time limit is put back too (``task_acks_on_timeout=False``); a task
  that raises out of its retries is rejected, not acknowledged
  (``task_acks_on_failure=False``), so it is dead-lettered instead of dropped;
- durable queues of the type ``SHOP_BROKER_QUEUE_TYPE`` (quorum by default, replicated
  over a cluster; ``shop.messaging.broker``); on quorum queues countdown retries travel
  through Celery's native delayed delivery, and Celery sets the prefetch per consumer
  (quorum queues have no global QoS: ``worker_detect_quorum_queues``);
- every queue dead-letters to ``shop.dlx``, so rejected, unknown and poison
  messages land in ``shop.dead_letter`` instead of vanishing; redeliveries are
  bounded by a count kept in the database (``shop.messaging.runner``), and on quorum
  queues by the broker's delivery limit too;
- the warehouse's answers (queue ``shop.warehouse``) are consumed inside the worker by
  a consumer step (``shop.orders.fulfillment.consumer``), acknowledged after their
  commit, dead-lettered with a reason when refused;
- the shop owns durable ``shop.fulfillment`` and ``shop.fulfillment_cancellations``
  queues bound to ``shop.events``, so a warehouse request (or its withdrawal) is kept
  even before the warehouse binds its own queue;
- JSON only, publisher confirms, time limits on every task;
- a task running when the worker loses RabbitMQ is let finish
  (``worker_cancel_long_running_tasks_on_connection_loss=False``): its message comes
  back and its copy finds the work done (stage guard, payment lease, email ledger),
  whereas cancelling it could stop an email between the SMTP server's "accepted" and
  the ledger's "sent", and send it twice (the chaos suite's scenario 2b saw it);
- task events on, so Flower (``celery -A shop flower``) follows every task by its name;
- the remote-control (pidbox) queue is not exclusive: after a network blip the
  worker reconnects before RabbitMQ has reaped the old connection, and redeclaring
  an exclusive queue it still holds fails with RESOURCE_LOCKED, which stops the
  worker for good (the queue still expires once its worker is gone).
"""

from __future__ import annotations

import logging
from typing import Any

import celery.apps.worker as celery_worker_app
from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    beat_init,
    celeryd_after_setup,
    celeryd_init,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
)
from celery.utils.log import get_multiprocessing_logger

from shop import logs, metrics, tracing
from shop.config import Settings, get_settings
from shop.db import dispose_engine
from shop.messaging import dispatch, relay
from shop.messaging.broker import (
    declare_topology,
    implied_queues,
    task_queues,
    transport_options,
)
from shop.messaging.models import OutboxMessage
from shop.orders.fulfillment.consumer import WarehouseConsumer
from shop.orders.workflow import table
from shop.orders.workflow.table import TaskName
from shop.reports import schedule as reports_schedule

log = logging.getLogger(__name__)

RECONCILE_EVERY = 300.0
# The modules whose ``shared_task``s the workers run (the domains never import this app).
TASK_MODULES = ["shop.orders.workflow.tasks", "shop.orders.provider.tasks",
                "shop.orders.fulfillment.tasks", "shop.orders.refunds.tasks",
                "shop.reports.tasks"]
ROUTES: dict[str, str] = {
    **table.routes(),
    **dict.fromkeys(reports_schedule.TASKS, "reports"),
    "shop.reports.*": "reports",
}


def configure(app: Celery, settings: Settings) -> None:
    """Apply the shop's settings to ``app`` (also used by tests with other URLs)."""
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_serializer="json", result_serializer="json", accept_content=["json"],
        task_ignore_result=True, result_backend=None,
        task_acks_late=True, task_reject_on_worker_lost=True, task_acks_on_timeout=False,
        task_acks_on_failure=False,
        worker_prefetch_multiplier=1,
        # Quorum queues refuse global QoS: Celery then prefetches per consumer (each
        # queue a worker consumes), and publishes countdowns through native delayed
        # delivery (declared by shop.messaging.broker.declare_topology as well).
        worker_detect_quorum_queues=True,
        broker_native_delayed_delivery_queue_type="quorum",
        worker_cancel_long_running_tasks_on_connection_loss=False,
        control_queue_exclusive=False,
        task_time_limit=60, task_soft_time_limit=45,
        task_queues=task_queues(settings), task_default_queue="orders",
        task_routes={name: {"queue": queue} for name, queue in ROUTES.items()},
        task_create_missing_queues=False,
        worker_consumer="shop.messaging.consumer:DeadLetteringConsumer",
        worker_hijack_root_logger=False,
        # Task events for Flower (`celery -A shop flower`, the `ops` extra): received,
        # started, succeeded, retried, failed, and sent by whoever publishes a task.
        worker_send_task_events=True, task_send_sent_event=True,
        timezone=settings.timezone, enable_utc=True,
        beat_schedule={
            "resume-stuck-orders": {"task": TaskName.RESUME_STUCK.value,
                                    "schedule": max(1.0, settings.stuck_after_seconds / 5)},
            "reconcile-payments": {"task": TaskName.RECONCILE.value,
                                   "schedule": RECONCILE_EVERY},
            "expire-authentications": {"task": TaskName.EXPIRE_AUTHENTICATIONS.value,
                                       "schedule": 60.0},
            **reports_schedule.beat_schedule(),
        },
    )


app = Celery("shop", include=TASK_MODULES)
configure(app, get_settings())
# The warehouse's answers are consumed in the worker, beside its tasks (not a new process).
app.steps["consumer"].add(WarehouseConsumer)

DIRECT_PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                        "interval_max": 0.2}


def _publish_now(message: OutboxMessage, countdown: float) -> None:
    """Publish a just-committed outbox row from this process (``shop.messaging.dispatch``)."""
    with app.producer_or_acquire() as producer:
        relay.send(app, producer, message, countdown=countdown,
                   retry_policy=DIRECT_PUBLISH_RETRY)


def install_publisher() -> None:
    """Publish each outbox row right after its commit from this process (the API and
    every worker call this at start-up; the relay remains the safety net)."""
    dispatch.install(_publish_now)


def reconfigure(settings: Settings) -> None:
    """Point this process's app at other settings (tests that start a fresh vhost):
    the queues and connection pools built from the old ones are dropped."""
    configure(app, settings)
    app.__dict__.pop("amqp", None)
    if app._pool is not None:
        app._pool.force_close_all()
        app._pool = None


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    """A forked pool child must not reuse its parent's database connections."""
    dispose_engine()


@beat_init.connect
def _check_reports_at_start(**_: Any) -> None:
    """A beat that was down catches up on the reports it missed as it starts, not a
    minute later (the build itself is once per day, however often it is asked)."""
    try:
        app.send_task(reports_schedule.BUILD_DUE_TASK, expires=reports_schedule.CHECK_EVERY * 5)
    except Exception:  # the broker is down: the regular check catches up instead
        log.warning("could not ask for due reports at start", exc_info=True)


@celeryd_after_setup.connect
def _consume_implied_queues(instance: Any, **_: Any) -> None:
    """A worker of ``-Q orders`` consumes ``intake`` too, and one of ``-Q payments``
    ``settlements`` (``broker.IMPLIED``): a deployment's command line from before those
    queues existed still runs new orders and captures."""
    queues = instance.app.amqp.queues
    selected = list(queues.consume_from or {})  # empty: every queue already
    for name in implied_queues(selected):
        queues.select_add(queues[name])  # the declared queue, not a new one by name
        log.info("consuming %s as well: it carries steps that earlier releases routed "
                 "to the queues named with -Q", name)


@celeryd_after_setup.connect
def _declare_topology(**_: Any) -> None:
    settings = get_settings()
    if settings.broker_is_amqp:
        with app.connection_for_write() as conn:
            declare_topology(conn, settings)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_lines_with_ids(logger: logging.Logger, **_: Any) -> None:
    """Celery's own handlers (and billiard's, for the pool's processes) write the shop's
    format, with request, order and task ids, from ``SHOP_LOG_LEVEL`` up."""
    settings = get_settings()
    handlers = [*logger.handlers, *get_multiprocessing_logger().handlers]
    logs.adopt(handlers, settings.log_format, level=settings.log_level)
    logger.setLevel(settings.log_level)


@celeryd_init.connect
def _no_banner_in_json(instance: Any, **_: Any) -> None:
    """The worker's start-up banner is raw text: JSON logs go without it (and its first
    warnings, before Celery sets logging up, are JSON too)."""
    if get_settings().log_format == "json":
        instance.quiet = True
        logs.warnings_first("json")
        celery_worker_app.safe_say = _said  # "worker: Warm shutdown" and the like


def _said(msg: str, f: Any = None) -> None:
    """What the worker's signal handlers print, as a log line instead."""
    logging.getLogger("celery.apps.worker").info(msg.strip())


def _beat_class(base: type[Any]) -> type[Any]:
    class Beat(base):  # type: ignore[misc]
        """``celery beat``, whose banner (raw text) JSON logs go without."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if get_settings().log_format == "json":
                kwargs["quiet"] = True
            super().__init__(*args, **kwargs)

    return Beat


app.Beat = _beat_class(app.Beat)


_bindings: dict[str, Any] = {}


@task_prerun.connect
def _bind_ids(task_id: str, task: Any, kwargs: dict[str, Any] | None = None,
              **_: Any) -> None:
    request_id = getattr(task.request, "request_id", None)
    order_id = (kwargs or {}).get("order_id")
    binding = logs.bound(request_id=request_id, order_id=order_id, task=(task_id, task.name))
    binding.__enter__()
    _bindings[task_id] = binding
    tracing.task_started(task_id, str(task.name), getattr(task.request, "traceparent", None),
                         order_id)


@task_postrun.connect
def _unbind_ids(task_id: str, state: str | None = None, **_: Any) -> None:
    tracing.task_finished(task_id, state)
    binding = _bindings.pop(task_id, None)
    if binding is not None:
        binding.__exit__(None, None, None)


@worker_init.connect
def _trace_tasks(**_: Any) -> None:
    """With ``SHOP_TRACING`` on, every task is a span (``shop.tracing``); set up before
    the pool forks, so its children inherit it."""
    tracing.configure(get_settings(), "shop-worker")


@worker_init.connect
def _publish_after_commit(**_: Any) -> None:
    """A worker publishes the next step's message right after the step's commit."""
    install_publisher()


@worker_init.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    port = get_settings().metrics_port
    pool = getattr(sender, "pool_cls", "")
    prefork = "prefork" in (pool if isinstance(pool, str) else getattr(pool, "__module__", ""))
    if port and prefork and not metrics.in_files():
        # shop.metrics gives a worker a directory unless the metrics were created first
        raise SystemExit(
            f"shop: SHOP_METRICS_PORT is set but the metrics were created without "
            f"{metrics.MULTIPROC_DIR}: the pool's processes would count where the port "
            f"cannot see; set {metrics.MULTIPROC_DIR} to an empty directory of this "
            "worker's own")
    if port:
        metrics.serve(port)
        log.info("worker metrics on :%d/metrics", port)
