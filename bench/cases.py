"""The workflow cases (see bench/README.md). Each starts what it needs on a fresh
database and vhost, measures, and stops it again; each returns its figures."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text

from bench import load
from bench.bare import metadata
from bench.stack import ROOT, Bench, free_port, wait_for
from shop.payments.dummy_limits import DummyLimits

# One order is done when it is confirmed, its email was accepted by the SMTP server and
# its warehouse request was published (the outbox row of the event is marked once the
# broker confirmed it).
DONE = text("""
    SELECT count(*), max(greatest(n.sent_at, m.published_at))
    FROM orders o
    JOIN notifications n ON n.order_id = o.id AND n.status = 'sent'
    JOIN fulfillment_requests f ON f.order_id = o.id
    JOIN outbox m ON m.id = f.id AND m.published_at IS NOT NULL
    WHERE o.status = 'confirmed'
""")
NOT_CONFIRMED = text("SELECT status, count(*) FROM orders WHERE status <> 'confirmed' "
                     "GROUP BY status")
COST_BEFORE = {"statements": 89, "commits": 28, "publishes": 7, "provider_calls": 5}
# Every order of a burst: its status, when it was placed and confirmed (its capture
# event), how many capture events and captured payments it has (exactly one each).
BURST_ORDERS = text("""
    SELECT o.status, o.created_at,
           (SELECT min(e.at) FROM order_events e
             WHERE e.order_id = o.id AND e.type = 'payment.captured'),
           (SELECT count(*) FROM order_events e
             WHERE e.order_id = o.id AND e.type = 'payment.captured'),
           (SELECT count(*) FROM payments p
             WHERE p.order_id = o.id AND p.captured_at IS NOT NULL)
    FROM orders o WHERE o.created_at >= :since
""")
CONFIRMED_SINCE = text("SELECT count(*) FROM orders WHERE status = 'confirmed' "
                       "AND created_at >= :since")


@dataclass
class Result:
    """A case's figures: ``rate`` (orders or requests a second) and anything else."""

    name: str
    rate: float | None = None
    figures: dict[str, float] = field(default_factory=dict)
    note: str = ""


def base_env(bench: Bench, args: argparse.Namespace, *, latency_ms: int = 0,
             **extra: str) -> dict[str, str]:
    """Settings for the case's processes: a fresh database and vhost, the dummy provider,
    the in-process SMTP sink, no checkout rate limit (the bench posts from one address)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SHOP_")}
    data = bench.work / f"data-{len(bench.databases)}"
    env.update({
        "SHOP_DATABASE_URL": bench.fresh_database(),
        "SHOP_BROKER_URL": bench.fresh_vhost(),
        "SHOP_PAYMENT_PROVIDER": "dummy",
        "SHOP_DUMMY_PAYMENT_LATENCY_MS": str(latency_ms),
        "SHOP_DATA_DIR": str(data),
        "SHOP_SMTP_URL": bench.smtp_url(),
        "SHOP_MAIL_FROM": "shop@example.com",
        "SHOP_CHECKOUT_RATE": "1000000", "SHOP_CHECKOUT_BURST": "1000000",
        "SHOP_PUBLISH_ON_COMMIT": "true",
        "BENCH_TALLY": bench.tally.address,
        "PYTHONPATH": str(ROOT),
        **extra,
    })
    env.pop("PYTHONWARNINGS", None)
    for step in ("migrate", "seed"):
        subprocess.run([sys.executable, "-m", "shop.cli", step], env=env, cwd=bench.work,
                       check=True, capture_output=True)
    engine = create_engine(env["SHOP_DATABASE_URL"])
    with engine.begin() as conn:  # enough stock for any run
        conn.execute(text("UPDATE products SET on_hand = 1000000000"))
    engine.dispose()
    return env


def start_api(bench: Bench, env: dict[str, str], app: str = "shop.api:app") -> str:
    port = free_port()
    bench.start("api", "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "warning", "--no-access-log", env=env)
    base = f"http://127.0.0.1:{port}"
    load.wait_http(f"{base}/livez")
    return base


# -- case 1 ----------------------------------------------------------------------------
def ceiling(bench: Bench, args: argparse.Namespace) -> Result:
    env = base_env(bench, args)
    os.environ.update({k: env[k] for k in ("SHOP_BROKER_URL", "BENCH_TALLY")})
    from bench import ceiling as chain_app
    from shop.celery import configure
    from shop.config import get_settings

    get_settings.cache_clear()
    configure(chain_app.app, get_settings())
    chain_app.app.__dict__.pop("amqp", None)
    bench.start_worker("worker", "bench.ceiling", env=env, concurrency=args.concurrency)

    def run(count: int, prefix: str) -> float:
        bench.tally.reset()
        started = time.time()
        for i in range(count):
            chain_app.workflow(f"{prefix}{i}").apply_async()
        wait_for(lambda: min(bench.tally.count("confirm"), bench.tally.count("fulfill"))
                 >= count, timeout=args.timeout, what=f"{count} chains", bench=bench)
        return count / (time.time() - started)

    run(args.warmup, "warm-")
    rate = run(args.orders, "order-")
    chain_app.app.close()
    return Result("ceiling", rate)


# -- case 2 ----------------------------------------------------------------------------
def naive(bench: Bench, args: argparse.Namespace) -> Result:
    env = base_env(bench, args)
    bench.start_worker("worker", "bench.naive", env=env, concurrency=args.concurrency)
    base = start_api(bench, env, "bench.app:app")

    def run(count: int, start: int) -> float:
        bench.tally.reset()
        started = time.time()
        load.place(base, "/bench/naive-orders", orders=count, clients=args.clients,
                   start=start)
        wait_for(lambda: min(bench.tally.count("confirm"), bench.tally.count("fulfill"))
                 >= count, timeout=args.timeout, what=f"{count} naive orders", bench=bench)
        return count / (time.time() - started)

    run(args.warmup, 0)
    return Result("naive", run(args.orders, args.warmup))


# -- cases 3 and 4 ----------------------------------------------------------------------
def payment_threads(args: argparse.Namespace, env: dict[str, str]) -> int:
    """``--payment-threads``, else what the operator's ``shop sizing --threads`` says for
    the case's settings (its provider budget) and ``--payment-latency-ms``."""
    if args.payment_threads:
        return int(args.payment_threads)
    out = subprocess.run([sys.executable, "-m", "shop.cli", "sizing", "--threads",
                          "--latency-ms", str(args.payment_latency_ms)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return int(out.strip())


def _shop_stack(bench: Bench, args: argparse.Namespace, *, latency_ms: int, split: bool,
                env: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    env = env or base_env(bench, args, latency_ms=latency_ms)
    if split:  # docs/operations.md "Production": payments on a threads pool, the rest in prefork
        threads = payment_threads(args, env)
        args.sized_threads = threads
        bench.start_worker("worker", "shop", env=env, concurrency=args.concurrency,
                           pool=args.pool, queues="intake,orders,notifications,reports")
        bench.start_worker("payments", "shop", concurrency=threads,
                           pool="threads", queues="payments,settlements",
                           env={**env, "SHOP_DB_POOL_SIZE": str(threads)})
    else:
        bench.start_worker("worker", "shop", env=env, concurrency=args.concurrency,
                           pool=args.pool)
    bench.start("relay", "-m", "shop.cli", "relay", env=env)
    return start_api(bench, env), env


def run_orders(bench: Bench, args: argparse.Namespace, base: str, env: dict[str, str], *,
               count: int, start: int, poll: float = 0.5) -> float:
    """Place ``count`` orders and wait until they are all done; orders per second from
    the first POST to the last order's email or warehouse message, whichever is later."""
    url = env["SHOP_DATABASE_URL"]
    engine = create_engine(url, pool_size=1)
    started = time.time()
    load.place(base, "/v1/orders", orders=count, clients=args.clients, start=start)
    target = start + count
    last: dt.datetime | None = None

    def finished() -> bool:
        nonlocal last
        with engine.connect() as conn:
            row = conn.execute(DONE).one()
        last = row[1]
        return int(row[0]) >= target

    try:
        wait_for(finished, timeout=args.timeout, interval=poll, bench=bench,
                 what=f"{target} orders to be confirmed, mailed and shipped")
    except TimeoutError:
        with engine.connect() as conn:
            others = {row[0]: row[1] for row in conn.execute(NOT_CONFIRMED)}
        raise TimeoutError(f"orders not done; not confirmed: {others}") from None
    finally:
        engine.dispose()
    assert last is not None
    return count / (last.timestamp() - started)


def shop(bench: Bench, args: argparse.Namespace) -> Result:
    base, env = _shop_stack(bench, args, latency_ms=0, split=False)
    run_orders(bench, args, base, env, count=args.warmup, start=0)
    if args.profile:
        return profiled(bench, args, base, env)
    return Result("shop", run_orders(bench, args, base, env, count=args.orders,
                                     start=args.warmup))


def shop_latency(bench: Bench, args: argparse.Namespace) -> Result:
    base, env = _shop_stack(bench, args, latency_ms=args.payment_latency_ms, split=True)
    run_orders(bench, args, base, env, count=args.warmup, start=0)
    return Result("shop_latency", run_orders(bench, args, base, env, count=args.orders,
                                             start=args.warmup))


def shop_split(bench: Bench, args: argparse.Namespace) -> Result:
    """Case 4's processes at 0 ms: what the split alone does (optional)."""
    base, env = _shop_stack(bench, args, latency_ms=0, split=True)
    run_orders(bench, args, base, env, count=args.warmup, start=0)
    return Result("shop_split", run_orders(bench, args, base, env, count=args.orders,
                                           start=args.warmup))


def burst(bench: Bench, args: argparse.Namespace) -> Result:
    """A sale: ``--burst-orders`` posted as fast as the API takes them, against the dummy
    with Stripe's live limits enforced (429 past them) and ``--payment-latency-ms`` per
    call, the shop's budget set to the same limits, case 4's processes with the payments
    pool from ``shop sizing``. Drain rate, 429s, every order confirmed once, and the
    time from placed to confirmed."""
    account, endpoint = (float(x) for x in args.burst_limits.split(","))
    env = base_env(bench, args, latency_ms=args.payment_latency_ms,
                   SHOP_DUMMY_PAYMENT_LIMITS=f"{account:g},{endpoint:g}",
                   SHOP_STRIPE_MAX_RPS=f"{account:g}", SHOP_STRIPE_ENDPOINT_RPS=f"{endpoint:g}")
    base, env = _shop_stack(bench, args, latency_ms=args.payment_latency_ms, split=True,
                            env=env)
    run_orders(bench, args, base, env, count=args.warmup, start=0)
    time.sleep(2)  # the budget's buckets refill: the burst starts from an idle provider
    engine = create_engine(env["SHOP_DATABASE_URL"], pool_size=1)
    with engine.connect() as conn:
        since: dt.datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    took: list[float] = []
    started = time.time()
    count, profile = args.burst_orders, _spy(bench, args, ("payments", "worker"))
    try:
        load.place(base, "/v1/orders", orders=count, clients=args.burst_clients,
                   start=args.warmup, took=took)
        accepted = time.time() - started

        def confirmed() -> bool:
            with engine.connect() as conn:
                done = int(conn.execute(CONFIRMED_SINCE, {"since": since}).scalar_one())
            return done >= count

        wait_for(confirmed, timeout=args.timeout, interval=0.5, bench=bench,
                 what=f"{count} burst orders to be confirmed")
    finally:
        notes = _stop_spies(profile)
    with engine.connect() as conn:
        rows = conn.execute(BURST_ORDERS, {"since": since}).all()
    engine.dispose()
    statuses = [row[0] for row in rows]
    confirmed_at = [row[2] for row in rows if row[2] is not None]
    waits = sorted((row[2] - row[1]).total_seconds() for row in rows if row[2] is not None)
    last = max(confirmed_at)
    limited = DummyLimits(Path(env["SHOP_DATA_DIR"]) / "dummy_payments",
                          account_rps=account, endpoint_rps=endpoint).limited()
    took.sort()
    figures = {
        "orders": len(rows), "confirmed": statuses.count("confirmed"),
        "confirmed_once": sum(1 for row in rows if row[3] == 1 and row[4] == 1),
        "limited": limited, "accept_rate": len(took) / accepted,
        "post_p50": 1000 * took[len(took) // 2], "post_p99": 1000 * took[int(len(took) * .99)],
        "p50": waits[len(waits) // 2], "p99": waits[int(len(waits) * .99)],
        "ceiling": min(endpoint, account / 2), "account_rps": account, "endpoint_rps": endpoint,
        "threads": float(args.sized_threads),
    }
    rate = count / (last.timestamp() - started)
    return Result("burst", rate, figures, note=notes)


def _spy(bench: Bench, args: argparse.Namespace,
         names: tuple[str, ...]) -> list[tuple[str, Path, subprocess.Popen[bytes]]]:
    """py-spy on the named processes (a prefork worker's children), when ``--profile``."""
    if not args.profile:
        return []
    spy = Path(sys.executable).with_name("py-spy")
    targets: dict[str, int] = {}
    for name in names:
        pids = bench.pids(name)
        for pid in (pids[1:] if len(pids) > 1 and name != "payments" else pids[:1]):
            targets[f"{name}-{pid}"] = pid
    spies = []
    for name, pid in targets.items():
        out = bench.work / f"profile-{name}.txt"
        spies.append((name, out, subprocess.Popen(
            [str(spy), "record", "--pid", str(pid), "--format", "raw", "--rate", "50",
             "--output", str(out), "--nonblocking", *(["--threads"] if name.startswith(
                 "payments") else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)))
    time.sleep(1)
    return spies


def _stop_spies(spies: list[tuple[str, Path, subprocess.Popen[bytes]]]) -> str:
    for _, _, proc in spies:
        os.killpg(proc.pid, signal.SIGINT)
    for _, _, proc in spies:
        proc.wait(timeout=60)
    return ("profiles: " + ", ".join(str(out) for _, out, _ in spies)) if spies else ""


def profiled(bench: Bench, args: argparse.Namespace, base: str,
             env: dict[str, str]) -> Result:
    """Case 3 with py-spy recording each worker child, the relay and the API."""
    spy = Path(sys.executable).with_name("py-spy")
    targets = {f"worker-{pid}": pid for pid in bench.pids("worker")[1:]}
    targets.update({"relay": bench.procs["relay"].pid, "api": bench.procs["api"].pid})
    spies = []
    for name, pid in targets.items():
        out = bench.work / f"profile-{name}.txt"
        spies.append((name, out, subprocess.Popen(
            [str(spy), "record", "--pid", str(pid), "--format", "raw", "--rate", "50",
             "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)))
    time.sleep(1)
    try:
        rate = run_orders(bench, args, base, env, count=args.orders, start=args.warmup)
    finally:
        for _, _, proc in spies:
            os.killpg(proc.pid, signal.SIGINT)
        for _, _, proc in spies:
            proc.wait(timeout=60)
    note = "profiles: " + ", ".join(str(out) for _, out, _ in spies)
    return Result("shop", rate, note=note)


# -- case 5 ----------------------------------------------------------------------------
def checkout_api(bench: Bench, args: argparse.Namespace) -> Result:
    env = base_env(bench, args)
    engine = create_engine(env["SHOP_DATABASE_URL"])
    metadata.create_all(engine)
    engine.dispose()
    base = start_api(bench, env, "bench.app:app")
    work = bench.work

    def hit(path: str, seconds: float) -> load.WrkResult:
        return load.wrk(base + path, connections=args.connections, seconds=seconds,
                        threads=2, work=work)

    hit("/bench/insert", 3)
    hit("/v1/orders", 3)
    runs: dict[str, list[load.WrkResult]] = {"/bench/insert": [], "/v1/orders": []}
    for _ in range(args.api_rounds):
        for path, results in runs.items():
            results.append(hit(path, args.api_seconds))
    figures: dict[str, float] = {}
    for label, path in (("bare", "/bench/insert"), ("orders", "/v1/orders")):
        results = runs[path]
        figures[f"{label}_rate"] = (sum(r.requests for r in results)
                                    / sum(r.seconds for r in results))
        figures[f"{label}_p50"] = sorted(r.p50_ms for r in results)[len(results) // 2]
        figures[f"{label}_p99"] = max(r.p99_ms for r in results)
        figures[f"{label}_errors"] = sum(r.errors for r in results)
    note = ""
    if args.profile:  # one more run of the orders route alone, under py-spy
        spies = _spy(bench, args, ("api",))
        try:
            hit("/v1/orders", args.api_seconds)
        finally:
            note = _stop_spies(spies)
    return Result("checkout_api", figures["orders_rate"], figures, note=note)


# -- case 6 ----------------------------------------------------------------------------
def cost(bench: Bench, args: argparse.Namespace) -> Result:
    """``tests/integration/test_cost_per_order.py`` run on its own: the counted figures
    it prints, and its ceilings (the test fails if any figure rises above them)."""
    env = {**os.environ, "SHOP_TEST_DATABASE_URL": args.pg_server}
    env.pop("PYTHONWARNINGS", None)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/integration/test_cost_per_order.py",
         "-q", "-s", "-p", "no:cacheprovider", "-p", "no:randomly"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    match = re.search(r"cost of one order: (\{.*?\})", out.stdout)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"the cost test failed:\n{out.stdout[-3000:]}{out.stderr[-2000:]}")
    figures = {k: float(v) for k, v in re.findall(r"'(\w+)': (\d+)", match.group(1))}
    others = re.search(r"provider calls: happy path \d+, declined (\d+), 3-D Secure (\d+)",
                       out.stdout)
    if others:
        figures["declined_calls"], figures["three_ds_calls"] = map(float, others.groups())
    return Result("cost", None, figures)


# -- case 7 ----------------------------------------------------------------------------
def memory(bench: Bench, args: argparse.Namespace) -> Result:
    base, env = _shop_stack(bench, args, latency_ms=0, split=False)
    first = min(1000, args.memory_orders)
    run_orders(bench, args, base, env, count=first, start=0, poll=2)
    time.sleep(2)
    before = {name: bench.rss_mb(name) for name in ("worker", "relay", "api")}
    rest = args.memory_orders - first
    done = first
    while rest > 0:  # in slices, so a long run shows progress in the log
        step = min(rest, 5000)
        run_orders(bench, args, base, env, count=step, start=done, poll=2)
        done, rest = done + step, rest - step
        print(f"  memory: {done} orders done", file=sys.stderr, flush=True)
    time.sleep(2)
    after = {name: bench.rss_mb(name) for name in ("worker", "relay", "api")}
    figures = {f"{name}_{when}": value for when, values in (("first", before), ("last", after))
               for name, value in values.items()}
    figures["first_orders"], figures["last_orders"] = first, args.memory_orders
    return Result("memory", None, figures)


CASES = {
    "ceiling": ceiling, "naive": naive, "shop": shop, "shop_latency": shop_latency,
    "checkout_api": checkout_api, "cost": cost, "memory": memory, "shop_split": shop_split,
    "burst": burst,
}
# Issue 19's targets; ``naive`` (case 2) and ``memory`` (case 7) run when named.
DEFAULT_CASES = ["cost", "ceiling", "shop", "shop_split", "shop_latency", "burst",
                 "checkout_api"]
