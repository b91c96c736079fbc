"""The chaos rig: the whole shop on real services, a few hundred orders, one fault, then
the promises counted against the database, localstripe, the broker and the SMTP server.

Processes (all started here, all killed with their process group when the test ends):
the API (a uvicorn subprocess), two Celery workers (prefork, 2 children each), the
outbox relay and beat, on a fresh PostgreSQL database and RabbitMQ vhost, against a
localstripe of the scenario's own behind a TCP proxy the test controls (so the
provider can be stalled or refused without losing its memory), and an aiosmtpd server
in this process. A warehouse queue is bound to ``shop.events`` before the first order.

Orders are placed from a thread pool at a steady pace, as a storefront would: each
with its own ``Idempotency-Key``, retried with the same key after a network error, a
5xx or a 429 (that is what the key is for). An order counts as accepted once the API
answered 202.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import amqp.exceptions
import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update

from shop.db import session_scope
from shop.messaging.models import OutboxMessage, TaskDelivery
from shop.orders.models import Order, OrderLine, Product
from shop.payments.models import Payment
from tests.chaos.faults import amqp_connection
from tests.fixtures.api import ADMIN_TOKEN, free_port
from tests.fixtures.localstripe import DECLINING_PAYMENT_METHOD, fetch_intents
from tests.fixtures.proxy import Forwarder
from tests.fixtures.smtp import SmtpServer
from tests.fixtures.stack import TERMINAL, Stack, drain_raw, wait_until

ORDERS = int(os.environ.get("SHOP_CHAOS_ORDERS", "200"))
RATE = float(os.environ.get("SHOP_CHAOS_RATE", "5"))  # orders a second, a steady storefront
# Read at import: the test-wide fixture clears every SHOP_ variable before each test.
PG_RESTART = os.environ.get("SHOP_CHAOS_PG_RESTART") == "1"
OVERLOAD_SECONDS = float(os.environ.get("SHOP_CHAOS_OVERLOAD_SECONDS", "20"))
SETTLE_TIMEOUT = float(os.environ.get("SHOP_CHAOS_SETTLE_TIMEOUT", "300"))
PLACE_TIMEOUT = 240.0  # how long a storefront keeps retrying one checkout
RECONCILE_EVERY = 60.0  # beat reconciles every 300 s; the rig asks as often as this
SKUS = ("MUG-BLUE", "TEE-S", "PEN-BRASS", "NOTE-A5")
STOCK_SHARE = 0.85  # stock for this share of the expected demand: some orders sell out
QUEUES = "intake,orders,payments,settlements,notifications,reports"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class Result:
    """One row of the table."""

    scenario: str
    orders: int = 0
    faults: int = 0
    lost: int = 0
    double_charged: int = 0
    oversold: int = 0
    duplicate_emails: int = 0
    duplicate_fulfillment: int = 0
    dead_letters: str = "0"
    settle_seconds: float = 0.0
    outcome: str = ""
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


RESULTS: list[Result] = []  # every scenario's row, for the table at the end (conftest)


@dataclass
class Placement:
    """Orders being placed in the background."""

    thread: threading.Thread
    latencies: list[float] = field(default_factory=list)

    def join(self, timeout: float = PLACE_TIMEOUT + 60) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "placing orders did not finish"


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2
                                     else host))


class Rig:
    def __init__(self, *, scenario: str, stack: Stack, broker_url: str, smtp: SmtpServer,
                 stripe_url: str, stripe_proxy: Forwarder, broker_proxy: Forwarder | None,
                 warehouse_queue: str, tmp_path: Path,
                 worker_urls: list[str | None] | None = None) -> None:
        self.result = Result(scenario)
        self.stack = stack
        self.broker_url = broker_url
        self.smtp = smtp
        self.stripe_url = stripe_url
        self.stripe_proxy = stripe_proxy
        self.broker_proxy = broker_proxy
        self.warehouse_queue = warehouse_queue
        self.tmp_path = tmp_path
        self.worker_urls = worker_urls or []  # a broker URL of its own for worker i
        self.api_url = ""
        self.accepted: dict[str, dict[str, Any]] = {}
        self.refused: list[str] = []
        self.poisoned = 0  # messages the scenario sent to the dead-letter queue on purpose
        self._lock = threading.Lock()
        self._workers = 0
        self.worker_names: list[str] = []
        self.metrics_ports: dict[str, int] = {}
        self._settled = False
        self.random = random.Random(scenario)

    # ---- processes -------------------------------------------------------------------

    def start(self, *, workers: int = 2) -> None:
        self.start_api()
        for i in range(workers):
            url = self.worker_urls[i] if i < len(self.worker_urls) else None
            self.start_worker(env={"SHOP_BROKER_URL": url} if url else None)
        wait_until(lambda: min(self.dead_letter_count(q) for q in (
            "shop.dead_letter", *QUEUES.split(","))) >= 0, timeout=60, stack=self.stack,
            what="the workers to declare their queues")
        self.stack.start_relay()
        self.stack.start("beat", "-m", "celery", "-A", "shop", "beat", "-l", "info",
                         "-s", str(self.tmp_path / "celerybeat-schedule"))

    def start_api(self) -> None:
        port = free_port()
        self.stack.start("api", "-m", "uvicorn", "shop.api:app", "--host", "127.0.0.1",
                         "--port", str(port), "--log-level", "warning")
        self.api_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.api_url}/livez", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the API did not start\n{self.stack.logs()}")

    def worker_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.broker_proxy is not None:
            env["SHOP_BROKER_URL"] = with_port(self.broker_url, self.broker_proxy.port)
        return env

    def start_worker(self, *, env: dict[str, str] | None = None) -> str:
        self._workers += 1
        name = f"w{self._workers}"
        metrics_dir = self.tmp_path / "metrics" / name
        metrics_dir.mkdir(parents=True)
        self.metrics_ports[name] = free_port()
        env = {"SHOP_METRICS_PORT": str(self.metrics_ports[name]),
               "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), **(env or {})}
        self.stack.start(name, "-m", "celery", "-A", "shop", "worker", "-l", "info",
                         "-n", f"{name}@%h", "-c", "2", "-Q", QUEUES,
                         "--without-gossip", "--without-mingle",
                         env={**self.worker_env(), **(env or {})})
        self.worker_names.append(name)
        return name

    def replace_worker(self, *, sig: int) -> str:
        """Signal one running worker (at random) and start another in its place."""
        victim = self.random.choice(self.worker_names)
        self.worker_names.remove(victim)
        self.stack.kill(victim, sig)
        return self.start_worker()

    def replace_workers(self, times: int, *, sig: int, pause: tuple[float, float]) -> None:
        """``times`` times: wait a random ``pause`` (seconds), then replace a worker;
        each counts as one fault."""
        for _ in range(times):
            time.sleep(self.random.uniform(*pause))
            self.replace_worker(sig=sig)
            self.result.faults += 1

    def shop_cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "shop.cli", *args], env=self.stack.env,
                              capture_output=True, text=True, timeout=300, check=False)
        return done.stdout + done.stderr

    def worker_metric(self, name: str) -> dict[str, float]:
        """``name``'s samples summed over the running workers, by their ``task`` label."""
        totals: dict[str, float] = defaultdict(float)
        for worker in self.worker_names:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_ports[worker]}/metrics",
                             timeout=5).text
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == name:
                        totals[sample.labels.get("task", "")] += sample.value
        return dict(totals)

    def dead_letter_count(self, queue: str = "shop.dead_letter") -> int:
        """Messages in ``queue`` (the dead letters); -1 until a worker has declared it."""
        conn = amqp_connection(self.broker_url)
        try:
            return int(conn.channel().queue_declare(queue, passive=True).message_count)
        except amqp.exceptions.NotFound:
            return -1
        finally:
            conn.close()

    def starts(self, task_id: str) -> int:
        """How many runs of task message ``task_id`` failed (the shop's own count)."""
        with session_scope() as session:
            return int(session.scalar(select(TaskDelivery.deliveries).where(
                TaskDelivery.message_id == f"{task_id}:failures")) or 0)

    # ---- orders ----------------------------------------------------------------------

    def stock_for(self, count: int) -> None:
        """Stock the scenario's products for ``STOCK_SHARE`` of the expected demand."""
        per_sku = count * 1.6 / len(SKUS)  # 1.15 lines of 1.4 units on average
        with session_scope() as session:
            session.execute(update(Product).where(Product.sku.in_(SKUS))
                            .values(on_hand=max(1, int(per_sku * STOCK_SHARE))))
            session.commit()

    def body(self, i: int) -> dict[str, Any]:
        pick = self.random
        skus = pick.sample(SKUS, 2 if pick.random() < 0.15 else 1)
        declined = pick.random() < 0.08
        return {
            "email": f"chaos{i}@example.com", "name": f"Chaos Customer {i}",
            "lines": [{"sku": s, "quantity": pick.choice((1, 1, 1, 2, 2, 3))} for s in skus],
            "payment_method": DECLINING_PAYMENT_METHOD if declined else "pm_card_visa",
            "shipping_address": {"line1": f"{i} Chaos Street", "city": "London",
                                 "postal_code": "SW1Y 4LB", "country": "GB"},
        }

    def place(self, count: int = ORDERS, *, rate: float = RATE,
              first: int = 0) -> Placement:
        """Place ``count`` orders at ``rate`` a second, in the background."""
        placement = Placement(thread=threading.Thread(target=lambda: None))

        def run() -> None:
            with httpx.Client(timeout=15, limits=httpx.Limits(max_connections=64)) as client, \
                    ThreadPoolExecutor(max_workers=48) as pool:
                started = time.monotonic()
                for n in range(count):
                    time.sleep(max(0.0, started + n / rate - time.monotonic()))
                    pool.submit(self._place_one, client, first + n, placement.latencies)

        placement.thread = threading.Thread(target=run, daemon=True)
        placement.thread.start()
        return placement

    def _place_one(self, client: httpx.Client, i: int, latencies: list[float]) -> None:
        body = self.body(i)
        key = f"{self.result.scenario}-{i}-{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + PLACE_TIMEOUT
        started = time.monotonic()
        while time.monotonic() < deadline:
            try:
                response = client.post(f"{self.api_url}/v1/orders", json=body,
                                       headers={"Idempotency-Key": key})
            except httpx.HTTPError:
                time.sleep(0.5)
                continue
            if response.status_code == 202:
                with self._lock:
                    self.accepted[response.json()["id"]] = body
                    latencies.append(time.monotonic() - started)
                return
            if response.status_code in (429, 500, 502, 503, 504):
                time.sleep(min(5.0, float(response.headers.get("Retry-After", "0.5"))))
                continue
            with self._lock:
                self.refused.append(f"{response.status_code} {response.text[:200]}")
            return
        with self._lock:
            self.refused.append(f"never answered 202 within {PLACE_TIMEOUT:.0f}s")

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.api_url}{path}", timeout=30,
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, **kwargs)

    # ---- settling --------------------------------------------------------------------

    def statuses(self) -> dict[str, str]:
        ids = [uuid.UUID(i) for i in self.accepted]
        with session_scope() as session:
            return {str(i): s for i, s in session.execute(
                select(Order.id, Order.status).where(Order.id.in_(ids)))}

    def failure_reasons(self) -> Counter[str]:
        """Why the accepted orders that failed did (``out_of_stock``, ``card_declined``...)."""
        ids = [uuid.UUID(i) for i in self.accepted]
        with session_scope() as session:
            return Counter(str(r) for r in session.scalars(
                select(Order.failure_reason).where(Order.id.in_(ids),
                                                   Order.status == "failed")))

    def outbox_pending(self) -> int:
        with session_scope() as session:
            return int(session.scalar(select(func.count()).select_from(OutboxMessage)
                                      .where(OutboxMessage.published_at.is_(None))) or 0)

    def emails_by_order(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for message in self.smtp.messages:
            counts.update(set(UUID.findall(message.as_string())) & self.accepted.keys())
        return counts

    def settle(self, *, again: bool = False) -> None:
        """Wait until every accepted order is terminal, its email sent and the outbox
        drained; reconciliation runs every ``RECONCILE_EVERY`` s as beat's would."""
        if self._settled and not again:
            return
        self._settled = True
        started = last_reconcile = time.monotonic()
        while True:
            try:
                current = self.statuses()
                emails = self.emails_by_order()
                pending = self.outbox_pending()
            except Exception as exc:  # the database may be down in this very scenario
                current, emails, pending = {}, Counter(), -1
                self.result.notes.append(f"settle: {type(exc).__name__}")
            confirmed = [i for i, s in current.items() if s == "confirmed"]
            if (len(current) == len(self.accepted) and set(current.values()) <= TERMINAL
                    and pending == 0 and all(emails[i] for i in confirmed)):
                break
            now = time.monotonic()
            if now - started > SETTLE_TIMEOUT:
                self.result.notes.append("did not settle")
                break
            if now - last_reconcile > RECONCILE_EVERY:
                last_reconcile = now
                self.shop_cli("reconcile")
            time.sleep(0.5)
        time.sleep(3)  # room for a late duplicate to show itself
        self.result.settle_seconds += round(time.monotonic() - started, 1)

    # ---- the promises ----------------------------------------------------------------

    def check(self) -> Result:
        """Count every broken promise into the result row; fail the test on any."""
        result = self.result
        result.orders = len(self.accepted)
        result.problems += [f"checkout refused: {r}" for r in self.refused[:5]]
        statuses = self.statuses()
        tally = Counter(statuses.values())
        result.outcome = ", ".join(f"{n} {s}" for s, n in sorted(tally.items()))
        reasons = self.failure_reasons()
        if reasons:
            result.outcome += " (" + ", ".join(f"{n} {r}" for r, n in reasons.most_common()) + ")"
        unfinished = [i for i in self.accepted if statuses.get(i) not in TERMINAL]
        result.lost += len(unfinished)
        if unfinished:
            result.problems.append(f"{len(unfinished)} orders not terminal: "
                                   f"{self._describe(unfinished[:5])}")
        confirmed = {i for i, s in statuses.items() if s == "confirmed"}
        self._check_payments(statuses, confirmed)
        self._check_stock(confirmed)
        self._check_emails(confirmed)
        self._check_fulfillment(confirmed)
        self._check_dead_letters()
        pending = self.outbox_pending()
        if pending:
            result.problems.append(f"outbox not drained: {pending} rows")
        RESULTS.append(result)
        return result

    def _describe(self, ids: list[str]) -> str:
        with session_scope() as session:
            rows = session.scalars(select(Order).where(Order.id.in_([uuid.UUID(i)
                                                                    for i in ids])))
            return "; ".join(f"{o.id} {o.status}/{o.stage} {[e.type for e in o.events][-3:]}"
                             for o in rows)

    def _check_payments(self, statuses: dict[str, str], confirmed: set[str]) -> None:
        result = self.result
        captured: Counter[str] = Counter()
        held: list[str] = []
        for intent in fetch_intents(self.stripe_url):
            order_id = (intent.get("metadata") or {}).get("order_id")
            if order_id not in self.accepted:
                continue
            if intent["status"] == "succeeded":
                captured[order_id] += 1
            elif intent["status"] == "requires_capture" and statuses.get(order_id) in TERMINAL:
                held.append(order_id)
        with session_scope() as session:
            refunded = {str(i) for i in session.scalars(select(Payment.order_id).where(
                Payment.status.in_(("refunded", "partially_refunded"))))}
        for order_id, count in captured.items():
            if count > 1:
                result.double_charged += count - 1
                result.problems.append(f"{order_id}: {count} captured PaymentIntents")
            if order_id not in confirmed and order_id not in refunded:
                result.double_charged += 1
                result.problems.append(f"{order_id} is {statuses.get(order_id)} but was "
                                       "charged")
        unpaid = [i for i in confirmed if not captured[i]]
        if unpaid:
            result.problems.append(f"{len(unpaid)} confirmed orders with no capture: "
                                   f"{unpaid[:3]}")
        if held:
            result.problems.append(f"{len(held)} finished orders still hold an "
                                   f"authorization: {held[:3]}")

    def _check_stock(self, confirmed: set[str]) -> None:
        with session_scope() as session:
            units = dict(session.execute(
                select(OrderLine.sku, func.sum(OrderLine.quantity))
                .where(OrderLine.order_id.in_([uuid.UUID(i) for i in confirmed]))
                .group_by(OrderLine.sku)).all())
            products = session.execute(select(Product.sku, Product.on_hand,
                                              Product.reserved)).all()
        for sku, on_hand, reserved in products:
            sold = int(units.get(sku, 0))
            if sold > on_hand:
                self.result.oversold += sold - on_hand
            if reserved != sold or reserved > on_hand:
                self.result.problems.append(f"{sku}: reserved {reserved}, confirmed units "
                                            f"{sold}, on hand {on_hand}")

    def _check_emails(self, confirmed: set[str]) -> None:
        emails = self.emails_by_order()
        for order_id, count in emails.items():
            if order_id not in confirmed:
                self.result.problems.append(f"{order_id} got an email but is not confirmed")
            self.result.duplicate_emails += max(0, count - 1)
        missing = [i for i in confirmed if not emails[i]]
        self.result.lost += len(missing)
        if missing:
            self.result.problems.append(f"{len(missing)} confirmed orders without an email")

    def _check_fulfillment(self, confirmed: set[str]) -> None:
        deliveries = self.take(self.warehouse_queue)
        ids_by_order: dict[str, set[str]] = defaultdict(set)
        for message in deliveries:
            body = json.loads(message.body)
            ids_by_order[str(body["order_id"])].add(str(message.properties.get("message_id")))
        redelivered = len(deliveries) - sum(len(v) for v in ids_by_order.values())
        if redelivered:
            self.result.notes.append(f"{redelivered} fulfillment redeliveries (same id)")
        for order_id, ids in ids_by_order.items():
            self.result.duplicate_fulfillment += len(ids) - 1
            if order_id not in confirmed:
                self.result.problems.append(f"{order_id}: fulfillment requested, not confirmed")
        missing = [i for i in confirmed if i not in ids_by_order]
        self.result.lost += len(missing)
        if missing:
            self.result.problems.append(f"{len(missing)} confirmed orders with no fulfillment "
                                        "message")
        if self.result.duplicate_fulfillment:
            self.result.problems.append(f"{self.result.duplicate_fulfillment} extra "
                                        "fulfillment message ids")

    def _check_dead_letters(self) -> None:
        dead = self.take("shop.dead_letter")
        self.result.dead_letters = (f"{len(dead)} ({self.poisoned} poisoned)" if self.poisoned
                                    else str(len(dead)))
        if len(dead) != self.poisoned:
            names = [(m.headers or {}).get("task") for m in dead][:5]
            self.result.problems.append(f"dead-letter queue holds {len(dead)}, expected "
                                        f"{self.poisoned}: {names}")

    def take(self, queue: str) -> list[Any]:
        for _ in range(30):  # the broker may still be coming back
            try:
                return drain_raw(self.broker_url, queue)
            except amqp.exceptions.NotFound:
                return []
            except OSError:
                time.sleep(1)
        return drain_raw(self.broker_url, queue)

    def finish(self) -> Result:
        """Settle, check, and fail the test if any promise broke."""
        self.settle()
        result = self.check()
        broken = (result.lost, result.double_charged, result.oversold,
                  result.duplicate_emails, result.duplicate_fulfillment)
        if result.problems or any(broken):
            raise AssertionError(f"{result}\nlogs in {self.stack.log_dir}")
        return result
