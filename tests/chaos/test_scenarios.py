"""The fault-injection scenarios of issue 13 (``make chaos``): each places orders
through the real API, injects one kind of fault, and counts broken promises."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shop.celery import app
from shop.config import get_settings
from shop.orders.workflow.table import TaskName
from tests.chaos.faults import WebhookStorm, publish_undecodable, terminate_backends, twice_env
from tests.chaos.rig import ORDERS, OVERLOAD_SECONDS, PG_RESTART, RATE, Rig
from tests.fixtures.smtp import SmtpServer
from tests.fixtures.stack import rabbitmqctl, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]

Chaos = Callable[..., Rig]


def test_baseline_without_faults(chaos: Chaos) -> None:
    rig = chaos("baseline, no fault")
    rig.stock_for(ORDERS)
    rig.place(ORDERS).join()
    rig.finish()


def test_workers_killed_ten_times(chaos: Chaos) -> None:
    rig = chaos("1. worker SIGKILL x10")
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS)
    rig.replace_workers(10, sig=signal.SIGKILL, pause=(1.0, 3.0))
    placing.join()
    rig.finish()


def test_every_task_message_delivered_twice(chaos: Chaos, tmp_path: Path) -> None:
    copies = tmp_path / "second-copies.log"
    copies.touch()
    rig = chaos("6. every task message twice", env=twice_env(copies))
    rig.stock_for(ORDERS)
    rig.place(ORDERS).join()
    rig.settle()
    rig.result.faults = len(copies.read_text().splitlines())
    assert rig.result.faults >= 5 * len(rig.accepted)  # placed, then at least 4 steps each
    rig.finish()


def test_graceful_deploy_restarts_every_worker(chaos: Chaos) -> None:
    rig = chaos("8. graceful deploy (SIGTERM)")
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS)
    # two rolling deploys of both workers
    rig.replace_workers(4, sig=signal.SIGTERM, pause=(3.0, 6.0))
    placing.join()
    rig.finish()


def test_poison_messages_are_dead_lettered_once(chaos: Chaos) -> None:
    rig = chaos("10. poison: undecodable + always raises")
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS)
    time.sleep(3)
    publish_undecodable(rig.broker_url)
    poison = app.send_task(TaskName.CHECK_INVENTORY.value, kwargs={"order_id": "poison"})
    rig.poisoned = rig.result.faults = 2
    placing.join()
    wait_until(lambda: rig.dead_letter_count() >= 2, timeout=120, what="both poison "
               "messages in the dead-letter queue", stack=rig.stack)
    starts = rig.starts(poison.id)
    time.sleep(5)
    assert rig.starts(poison.id) == starts <= get_settings().retry_max_attempts  # no loop
    alerts = rig.worker_metric("shop_dead_letters_total")
    assert alerts.get("undecodable", 0) >= 1, alerts
    assert alerts.get(TaskName.CHECK_INVENTORY.value, 0) >= 1, alerts
    rig.finish()


def test_payment_provider_stalls_then_refuses_for_twenty_seconds(chaos: Chaos) -> None:
    rig = chaos("4. localstripe down 20 s (10 s stalled, 10 s refused)")
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS)
    time.sleep(8)
    rig.stripe_proxy.stall()  # calls time out: the worst case, answers lost
    time.sleep(10)
    rig.stripe_proxy.stop()  # refused, live connections reset
    rig.stripe_proxy.flow()
    time.sleep(10)
    rig.stripe_proxy.start()
    rig.result.faults = 2
    placing.join()
    rig.settle()
    retried = rig.admin("POST", "/admin/orders/retry", json={
        "step": "payment", "reason": "payment_unavailable", "limit": 500})
    assert retried.status_code == 202, retried.text
    queued = retried.json()["queued"]
    rig.result.notes.append(f"{len(queued)} orders failed payment_unavailable, "
                            "then retried by an admin")
    rig.settle(again=True)
    rig.finish()


def test_mail_server_refuses_for_a_while(chaos: Chaos, smtp_server: SmtpServer) -> None:
    rig = chaos("5. SMTP refuses (451) for 20 s")
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS)
    time.sleep(10)
    smtp_server.refuse_everyone("451 4.3.0 Try again later")
    time.sleep(20)
    smtp_server.accept_everyone()
    rig.result.faults = 1
    placing.join()
    rig.finish()


def test_rabbitmq_restarted_mid_run(chaos: Chaos) -> None:
    rig = chaos("2a. RabbitMQ stop_app/start_app")
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS)
    time.sleep(12)
    try:
        rabbitmqctl("stop_app")
        time.sleep(5)  # the broker is shared with other test runs: keep it short
    finally:
        rabbitmqctl("start_app")
    rig.result.faults = 1
    placing.join()
    rig.finish()


def test_broker_unreachable_for_thirty_seconds_during_checkout(chaos: Chaos) -> None:
    rig = chaos("2b. broker unreachable 30 s (every process)", broker_proxy_for_all=True)
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS)
    time.sleep(8)
    assert rig.broker_proxy is not None
    rig.broker_proxy.stop()  # refused, every live connection reset
    time.sleep(30)
    rig.broker_proxy.start()
    rig.result.faults = 1
    placing.join()
    rig.finish()


def test_database_connections_killed_and_postgresql_restarted(chaos: Chaos,
                                                              pg_url: str) -> None:
    restart = PG_RESTART
    rig = chaos("3. pg_terminate_backend x5" + (" + PostgreSQL restart" if restart else ""))
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS)
    for _ in range(5):
        time.sleep(rig.random.uniform(3.0, 6.0))
        rig.result.notes.append(f"{terminate_backends(pg_url)} connections terminated")
        rig.result.faults += 1
    if restart:  # every other user of this server notices: run it sparingly
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main",
                        "restart"], check=True, timeout=120)
        rig.result.faults += 1
    placing.join()
    rig.finish()


def test_network_to_rabbitmq_drops_and_stalls(chaos: Chaos) -> None:
    rig = chaos("11. worker<->RabbitMQ: 3 resets + 15 s stall", workers_via_proxy=True)
    assert rig.broker_proxy is not None
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS)
    for _ in range(3):
        time.sleep(rig.random.uniform(4.0, 7.0))
        rig.result.notes.append(f"{rig.broker_proxy.drop()} connections reset")
        rig.result.faults += 1
    rig.broker_proxy.stall()
    time.sleep(15)
    rig.broker_proxy.flow()
    rig.result.faults += 1
    placing.join()
    rig.finish()


def test_webhooks_duplicated_reordered_and_raced(chaos: Chaos) -> None:
    rig = chaos("7. webhooks x2, shuffled, raced")
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS)
    storm = WebhookStorm(rig)
    storm.start()
    placing.join()
    rig.settle()
    storm.stop()
    rig.result.faults = storm.sent
    assert storm.sent
    assert not storm.refused, storm.refused[:3]
    rig.finish()


def test_overload_five_times_the_sustainable_rate(chaos: Chaos) -> None:
    seconds = OVERLOAD_SECONDS
    rate = 5 * RATE
    rig = chaos(f"9. overload {rate:.0f}/s for {seconds:.0f} s")
    count = int(rate * seconds)
    rig.stock_for(count)
    placing = rig.place(count, rate=rate)
    placing.join()
    latencies = sorted(placing.latencies)
    rig.result.faults = count
    rig.result.notes.append(
        f"checkout p50 {latencies[len(latencies) // 2]:.2f} s, "
        f"p99 {latencies[int(len(latencies) * 0.99)]:.2f} s")
    rig.finish()
