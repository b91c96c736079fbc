"""``shop broker``: the shop's queues on RabbitMQ.

``shop broker migrate-queues`` brings every queue the shop owns to the type
``SHOP_BROKER_QUEUE_TYPE`` says (and to the arguments this release declares), moving the
messages that wait in them (``shop.messaging.migration``; docs/deployment.md, "Queue
types"). With ``--check`` it only says which queues differ, and exits 1 if any does.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shop.config import get_settings, redact_url


def register(sub: Any) -> None:
    """Add ``broker migrate-queues`` to the ``shop`` parser."""
    broker = sub.add_parser("broker", help="the shop's queues on RabbitMQ")
    verbs = broker.add_subparsers(dest="verb", required=True)
    migrate = verbs.add_parser(
        "migrate-queues", help="move every queue to SHOP_BROKER_QUEUE_TYPE (classic to "
        "quorum), keeping the messages waiting in them; stop workers, relays and beat first")
    migrate.add_argument("--check", action="store_true",
                         help="only list the queues whose type or arguments differ; exit 1 "
                              "if any does")
    migrate.set_defaults(run=_migrate_queues)


def _migrate_queues(args: argparse.Namespace) -> int:
    from kombu.connection import Connection

    from shop.messaging import migration
    from shop.messaging.broker import transport_options

    settings = get_settings()
    if not settings.broker_is_amqp:
        print("shop broker: the embedded broker has no queue types: nothing to migrate")
        return 0
    print(f"shop broker: queues at {redact_url(settings.broker_url)}, to be "
          f"{settings.broker_queue_type}", flush=True)
    with Connection(settings.broker_url, connect_timeout=10,  # type: ignore[no-untyped-call]
                    transport_options=transport_options(settings)) as conn:
        conn.ensure_connection(max_retries=2)
        if args.check:
            return _check(conn, settings)
        try:
            outcomes = migration.migrate(conn, settings,
                                         say=lambda line: print(f"  {line}", flush=True))
        except migration.MigrationRefused as exc:
            print(f"shop broker: refused: {exc}", file=sys.stderr)
            return 1
    for outcome in outcomes:
        print(outcome.line())
    moved = sum(o.moved or 0 for o in outcomes)
    print(f"shop broker: every queue is {settings.broker_queue_type}; {moved} waiting "
          "messages moved")
    return 0


def _check(conn: Any, settings: Any) -> int:
    from shop.messaging import migration

    differ = 0
    for queue, live in migration.plan(conn, settings):
        if live is None:
            print(f"{queue.name}: not declared yet")
        elif migration.arguments_differ(live, queue):
            differ += 1
            print(f"{queue.name}: {migration.describe(live, queue)}")
        else:
            print(f"{queue.name}: {migration.queue_type(live)}, as expected")
    if differ:
        print(f"shop broker: {differ} queue{'s' * (differ > 1)} to migrate: stop the workers, "
              "relays and beat, then run `shop broker migrate-queues`")
    return 1 if differ else 0
