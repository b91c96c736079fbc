"""Throughput and latency of the whole workflow, run by hand.

    .venv/bin/python bench/workflow.py --orders 200            # embedded defaults
    SHOP_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/shop_bench \\
    SHOP_BROKER_URL=amqp://guest:guest@127.0.0.1:5672// \\
        .venv/bin/python bench/workflow.py --orders 200        # real services

Starts a uvicorn API, one Celery worker (``--concurrency``) and the relay in a
scratch data directory, places orders from a thread pool, and prints checkout
latency, time from checkout to ``confirmed``, and confirmed orders per second.
The dummy provider's latency (``--payment-latency-ms``) stands in for Stripe.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import create_engine, func, select

from shop.orders.models import Order

BODY = {
    "email": "bench@example.com", "name": "Bench",
    "lines": [{"sku": "STICKER-PACK", "quantity": 1}],
    "payment_method": "pm_card_visa",
    "shipping_address": {"line1": "1 Bench St", "city": "Leeds", "postal_code": "LS1",
                         "country": "GB"},
}


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--payment-latency-ms", type=int, default=0)
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="shop-bench-"))
    env = {**os.environ, "SHOP_DATA_DIR": str(data),
           "SHOP_DUMMY_PAYMENT_LATENCY_MS": str(args.payment_latency_ms),
           "SHOP_PAYMENT_PROVIDER": "dummy"}
    py = sys.executable
    subprocess.run([py, "-m", "shop.cli", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([py, "-m", "shop.cli", "seed"], env=env, check=True, capture_output=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (data / "bench.log").open("wb")
    procs = [subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True) for cmd in (
        [py, "-m", "uvicorn", "shop.api:app", "--port", str(port), "--log-level", "warning"],
        [py, "-m", "celery", "-A", "shop", "worker", "-l", "warning", "-c",
         str(args.concurrency), "-Q", "orders,payments,notifications,reports",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        [py, "-m", "shop.cli", "relay"],
    )]
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        time.sleep(2)  # let the worker connect
        placed: dict[str, float] = {}
        checkout: list[float] = []

        def place(i: int) -> None:
            start = time.perf_counter()
            r = httpx.post(f"{base}/v1/orders", json=BODY,
                           headers={"Idempotency-Key": f"bench-{i}"}, timeout=30)
            checkout.append(time.perf_counter() - start)
            placed[r.json()["id"]] = time.perf_counter()

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(place, range(args.orders)))
        ids = [uuid.UUID(o) for o in placed]
        engine = create_engine(env.get("SHOP_DATABASE_URL") or f"sqlite:///{data}/shop.sqlite3")
        finished_query = select(func.count()).select_from(Order).where(
            Order.id.in_(ids), Order.status != "pending")
        with engine.connect() as conn:
            while conn.execute(finished_query).scalar_one() < len(ids):
                conn.rollback()
                time.sleep(0.2)
            elapsed = time.perf_counter() - t0
            rows = conn.execute(select(Order.created_at, Order.updated_at, Order.status)
                                .where(Order.id.in_(ids))).all()
        engine.dispose()
        to_confirm = [_aware(updated).timestamp() - _aware(created).timestamp()
                      for created, updated, _ in rows]
        statuses = Counter(status for _, _, status in rows)
        print(f"database  {env.get('SHOP_DATABASE_URL', 'sqlite (embedded)').split('@')[-1]}")
        print(f"broker    {env.get('SHOP_BROKER_URL', 'filesystem (embedded)').split('@')[-1]}")
        print(f"orders {args.orders}, worker concurrency {args.concurrency}, "
              f"payment latency {args.payment_latency_ms} ms")
        print(f"checkout      p50 {statistics.median(checkout) * 1000:7.1f} ms   "
              f"p95 {pct(checkout, 0.95) * 1000:7.1f} ms")
        print(f"to finished   p50 {statistics.median(to_confirm) * 1000:7.1f} ms   "
              f"p95 {pct(to_confirm, 0.95) * 1000:7.1f} ms")
        print(f"throughput    {len(placed) / elapsed:7.1f} orders/s finished   {dict(statuses)}")
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


if __name__ == "__main__":
    main()
