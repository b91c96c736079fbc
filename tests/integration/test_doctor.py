"""``shop doctor`` run as operators run it: a subprocess with the environment it checks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from shop.config import Settings
from shop.messaging.broker import QUEUES, declare_topology, task_queues
from shop.migrate import upgrade
from tests.fixtures.smtp import free_port

SECRET = "d0ct0r-never-prints-this"
ADMIN = "doctor-admin-token-0123456789"


def doctor(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    clean.pop("PYTHONWARNINGS", None)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "shop.cli", "doctor"], env={**clean, **env},
                          capture_output=True, text=True, timeout=60, check=False)
    return done, time.monotonic() - started


@contextmanager
def consuming(broker: str, names: tuple[str, ...], kind: str = "quorum") -> Iterator[None]:
    """The task queues declared as a worker declares them (queues of type ``kind``), and
    a consumer on ``names`` for as long as the block runs."""
    queues = task_queues(Settings(broker_url=broker, broker_queue_type=kind))
    with Connection(broker) as conn:
        for queue in queues:
            queue(conn.default_channel).declare()
        consumer = conn.Consumer([q for q in queues if q.name in names], accept=["json"])
        consumer.consume()
        try:
            yield
        finally:
            consumer.cancel()


def lines_by_check(stdout: str) -> dict[str, str]:
    """``{"broker": "FAIL  broker: …", …}`` from the doctor's output."""
    found = {}
    for line in stdout.splitlines():
        status, _, rest = line.partition(" ")
        if status in ("ok", "warn", "skip", "FAIL"):
            found[rest.strip().split(":", 1)[0]] = line
    return found


@pytest.mark.postgres
def test_an_unreachable_rabbitmq_is_named_with_the_url_tried_without_its_password(
        pg_url: str, tmp_path: Path) -> None:
    upgrade(pg_url)
    port = free_port()  # nobody listens there
    done, took = doctor({"SHOP_DATABASE_URL": pg_url, "SHOP_DATA_DIR": str(tmp_path),
                         "SHOP_BROKER_URL": f"amqp://shop:{SECRET}@127.0.0.1:{port}/shop"})
    assert done.returncode == 1, done.stdout + done.stderr
    broker = lines_by_check(done.stdout)["broker"]
    assert broker.startswith("FAIL")
    assert f"RabbitMQ at amqp://shop:***@127.0.0.1:{port}/shop does not answer" in broker
    assert "fix:" in broker
    assert "SHOP_BROKER_URL" in broker
    assert lines_by_check(done.stdout)["database"].startswith("ok")
    assert SECRET not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.splitlines()[-1] == "shop doctor: 1 problem (broker)"
    assert took < 20


@pytest.mark.postgres
@pytest.mark.rabbitmq
def test_postgresql_rabbitmq_smtp_and_a_stripe_test_key_all_pass(
        pg_url: str, vhost_url: str, smtp_server: Any, tmp_path: Path) -> None:
    upgrade(pg_url)
    with Connection(vhost_url) as conn:
        declare_topology(conn, Settings(broker_url=vhost_url))  # as a worker does at start
    with consuming(vhost_url, QUEUES):  # and a worker on every queue
        done, took = doctor({
            "SHOP_DATABASE_URL": pg_url, "SHOP_BROKER_URL": vhost_url,
            "SHOP_SMTP_URL": smtp_server.url, "SHOP_STRIPE_API_KEY": f"sk_test_{SECRET}",
            "SHOP_STRIPE_WEBHOOK_SECRET": f"whsec_{SECRET}", "SHOP_ADMIN_TOKEN": ADMIN,
            "SHOP_DATA_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    checks = lines_by_check(done.stdout)
    assert {name: line.split()[0] for name, line in checks.items()} == dict.fromkeys(
        ["database", "migrations", "broker", "queues", "queue types", "smtp", "payments",
         "webhooks", "admin"], "ok"), done.stdout
    assert "every declared queue is a quorum queue" in checks["queue types"]
    assert "PostgreSQL" in checks["database"]
    assert "max_connections" in checks["database"]
    assert "Stripe in test mode" in checks["payments"]
    assert SECRET not in done.stdout
    assert ADMIN not in done.stdout
    assert done.stdout.splitlines()[-1] == "shop doctor: all checks passed (0 warnings)"
    assert took < 20


@pytest.mark.postgres
@pytest.mark.rabbitmq
def test_a_task_queue_without_a_consumer_fails_naming_the_queue(
        pg_url: str, vhost_url: str, tmp_path: Path) -> None:
    upgrade(pg_url)
    with Connection(vhost_url) as conn:
        declare_topology(conn, Settings(broker_url=vhost_url))
    busy = ("intake", "orders", "payments", "settlements", "notifications")  # none on reports
    with consuming(vhost_url, busy):
        done, _ = doctor({"SHOP_DATABASE_URL": pg_url, "SHOP_BROKER_URL": vhost_url,
                          "SHOP_DATA_DIR": str(tmp_path)})
    assert done.returncode == 1, done.stdout + done.stderr
    queues = lines_by_check(done.stdout)["queues"]
    assert queues.startswith("FAIL  queues: no worker consumes reports:"), queues
    assert "-Q reports" in queues
    assert "orders" not in queues.split("->")[0]
    assert lines_by_check(done.stdout)["broker"].startswith("ok")
    assert done.stdout.splitlines()[-1] == "shop doctor: 1 problem (queues)"


@pytest.mark.postgres
@pytest.mark.rabbitmq
@pytest.mark.parametrize(("live", "expected"), [("classic", "quorum"), ("quorum", "classic")])
def test_a_queue_of_another_type_than_the_setting_fails_naming_it_and_the_migration(
        pg_url: str, vhost_url: str, tmp_path: Path, live: str, expected: str) -> None:
    """Queues declared by a release (or a setting) of the other type: the workers of this
    one could not declare them, and the doctor says so before they try."""
    upgrade(pg_url)
    with Connection(vhost_url) as conn:
        declare_topology(conn, Settings(broker_url=vhost_url, broker_queue_type=live))
    with consuming(vhost_url, QUEUES, kind=live):
        done, _ = doctor({"SHOP_DATABASE_URL": pg_url, "SHOP_BROKER_URL": vhost_url,
                          "SHOP_DATA_DIR": str(tmp_path), "SHOP_BROKER_QUEUE_TYPE": expected})
    assert done.returncode == 1, done.stdout + done.stderr
    checks = lines_by_check(done.stdout)
    types = checks["queue types"]
    assert types.startswith(f"FAIL  queue types: orders is a {live} queue, expected "
                            f"{expected}; intake is a {live} queue"), types
    assert "shop.fulfillment is" in types
    assert "shop broker migrate-queues" in types.split("-> fix:")[1]
    assert checks["queues"].startswith("ok")
    assert done.stdout.splitlines()[-1] == "shop doctor: 1 problem (queue types)"


@pytest.mark.postgres
@pytest.mark.rabbitmq
def test_task_queues_not_declared_yet_are_a_warning_before_the_workers_start(
        pg_url: str, vhost_url: str, tmp_path: Path) -> None:
    upgrade(pg_url)
    done, _ = doctor({"SHOP_DATABASE_URL": pg_url, "SHOP_BROKER_URL": vhost_url,
                      "SHOP_DATA_DIR": str(tmp_path)})
    queues = lines_by_check(done.stdout)["queues"]
    assert queues.startswith(f"warn  queues: {', '.join(QUEUES)} not declared yet"), queues
    assert "FAIL" not in done.stdout, done.stdout


def test_a_schema_behind_the_code_says_to_run_shop_migrate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/behind.sqlite3"
    upgrade(url, "0004")
    done, _ = doctor({"SHOP_DATABASE_URL": url, "SHOP_DATA_DIR": str(tmp_path)})
    assert done.returncode == 1
    migrations = lines_by_check(done.stdout)["migrations"]
    assert migrations.startswith("FAIL  migrations: the database is at 0004")
    assert "run `shop migrate`" in migrations


def test_a_laptop_on_the_embedded_defaults_passes_with_warnings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shop.sqlite3"
    upgrade(url)
    done, _ = doctor({"SHOP_DATABASE_URL": url, "SHOP_DATA_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stdout
    checks = lines_by_check(done.stdout)
    assert checks["database"].startswith("warn")
    assert "PostgreSQL" in checks["database"]
    assert checks["broker"].startswith("warn")
    assert "RabbitMQ" in checks["broker"]
    assert checks["payments"].startswith("warn  payments: the dummy provider")


def test_an_unreachable_smtp_server_is_a_problem(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shop.sqlite3"
    upgrade(url)
    done, took = doctor({"SHOP_DATABASE_URL": url, "SHOP_DATA_DIR": str(tmp_path),
                         "SHOP_SMTP_URL": f"smtp://mailer:{SECRET}@127.0.0.1:{free_port()}"})
    assert done.returncode == 1
    assert lines_by_check(done.stdout)["smtp"].startswith("FAIL  smtp: the SMTP server at")
    assert SECRET not in done.stdout
    assert took < 20
