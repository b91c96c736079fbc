"""How long one day's report takes on a big shop, against the bare SQL it runs; run by hand.

    .venv/bin/python -m bench.reports                       # 1,000,000 orders over 30 days
    .venv/bin/python -m bench.reports --orders 100000 --repeat 5
    .venv/bin/python -m bench.reports --orders 20000 --html docs/daily-report-sample.html

Makes a fresh PostgreSQL database on ``--server`` (dropped afterwards unless
``--keep``), migrates it, fills it with set-based SQL (``bench/report_data.py``), then
starts one child process that, ``--repeat`` times, after a warm-up of both:

- runs the report's SQL bare: every statement the report issued in the warm-up,
  replayed with its parameters on a raw psycopg connection, all rows fetched (the
  database's own work, without SQLAlchemy or the report's Python);
- builds the report (``shop.reports.figures.build``: the same statements through
  SQLAlchemy, plus assembling the JSON), then renders it (HTML, text, CSV).

It prints the medians and their ratio, measured in the same run, and the child's peak
resident memory (``getrusage``), which covers the whole report process: interpreter,
libraries, the build and the rendering. Finally the child runs the use case once
(build, store, mail to ``.eml`` files) for a day not yet built.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TIMEZONE = "Europe/London"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.reports", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--server", default=os.environ.get("SHOP_BENCH_SERVER_URL", SERVER),
                        help="a PostgreSQL URL whose user may create databases")
    parser.add_argument("--timezone", default=TIMEZONE)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--html", type=Path, help="also save the day's report page here")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the report process's URL
    parser.add_argument("--day", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse()
    if args.child:
        print(json.dumps(child(args)))
        return
    name = f"shop_bench_reports_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(args.server).set(database=name).render_as_string(hide_password=False)
    try:
        run(args, url)
    finally:
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run(args: argparse.Namespace, url: str) -> None:
    from bench.report_data import fill
    from shop.migrate import upgrade

    upgrade(url)
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    engine = create_engine(url)
    started = time.perf_counter()
    with engine.connect() as conn:
        counts = fill(conn, orders=args.orders, days=args.days, end=today)
        version = conn.execute(text("SHOW server_version")).scalar_one()
    engine.dispose()
    filled = time.perf_counter() - started
    day = (today - dt.timedelta(days=args.days // 2)).date()
    env = {**os.environ, "SHOP_DATABASE_URL": url, "SHOP_TIMEZONE": args.timezone}
    command = [sys.executable, "-m", "bench.reports", "--child", url, "--day", day.isoformat(),
               "--repeat", str(args.repeat), "--timezone", args.timezone]
    if args.html:
        command += ["--html", str(args.html.resolve())]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(done.stderr)
    report(args, counts=counts, filled=filled, day=day, version=str(version),
           figures=json.loads(done.stdout.splitlines()[-1]))


def report(args: argparse.Namespace, *, counts: dict[str, int], filled: float, day: dt.date,
           version: str, figures: dict[str, Any]) -> None:
    bare, build, render = figures["bare"], figures["build"], figures["render"]
    print(f"machine     {machine()}; PostgreSQL {version}")
    print("data        " + ", ".join(f"{n:,} {t}" for t, n in counts.items())
          + f" ({args.days} days; filled in {filled:.0f} s)")
    print(f"day         {day} in {args.timezone}: {figures['orders_that_day']:,} orders placed, "
          f"{figures['statements']} SQL statements; medians of {args.repeat} runs")
    print(f"bare SQL    {bare * 1000:8.1f} ms   (raw psycopg, same statements and parameters)")
    print(f"report      {build * 1000:8.1f} ms   ratio {build / bare:.2f}x the bare SQL")
    print(f"+ rendering {(build + render) * 1000:8.1f} ms   ratio {(build + render) / bare:.2f}x"
          f"   (HTML, text, CSV: {render * 1000:.1f} ms)")
    print(f"use case    {figures['use_case'] * 1000:8.1f} ms   (build, store, mail once)")
    print(f"peak RSS    {figures['max_rss_mb']:8.1f} MB   (the report process, all of it)")
    slowest = ", ".join(f"{ms:.0f} ms {what}" for what, ms in figures["slowest"])
    print(f"slowest SQL {slowest}")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        memory = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    except OSError:
        memory = 0
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GB RAM, Python {platform.python_version()}"


def child(args: argparse.Namespace) -> dict[str, Any]:
    """The report process: warm up, then time bare SQL and the report, alternately."""
    import resource

    import psycopg

    from shop.config import get_settings
    from shop.db import get_engine, get_sessionmaker
    from shop.reports import figures, rendering

    day = dt.date.fromisoformat(args.day)
    settings = get_settings()
    now = dt.datetime.now(dt.UTC)
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    def build() -> dict[str, Any]:
        with get_sessionmaker()() as session:
            data = figures.build(session, day=day, timezone=settings.timezone,
                                 low_stock_below=settings.report_low_stock, now=now)
            session.rollback()
            return data

    event.listen(get_engine(), "before_cursor_execute", capture)
    data = build()
    event.remove(get_engine(), "before_cursor_execute", capture)
    conninfo = make_url(args.child).set(drivername="postgresql").render_as_string(
        hide_password=False)
    timings: dict[str, list[float]] = {"bare": [], "build": [], "render": []}
    per_statement: dict[int, float] = {}
    with psycopg.connect(conninfo, autocommit=True) as raw:
        for run in range(args.repeat + 1):  # the first is the warm-up
            bare = replay(raw, captured, per_statement)
            started = time.perf_counter()
            data = build()
            built = time.perf_counter() - started
            started = time.perf_counter()
            rendering.page(data), rendering.text(data), rendering.csv_attachment(data)
            json.dumps(data)
            if run:
                timings["bare"].append(bare)
                timings["build"].append(built)
                timings["render"].append(time.perf_counter() - started)
    if args.html:
        args.html.write_text(rendering.page(data))
    slowest = sorted(per_statement.items(), key=lambda item: -item[1])[:3]
    return {
        **{name: statistics.median(values) for name, values in timings.items()},
        "use_case": use_case(day - dt.timedelta(days=1)),
        "statements": len(captured),
        "orders_that_day": data["orders"]["placed"],
        "slowest": [(_what(captured[i][0]), seconds * 1000) for i, seconds in slowest],
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def replay(raw: Any, captured: list[tuple[str, Any]], slowest: dict[int, float]) -> float:
    """Run the captured statements bare, fetching every row; seconds for all of them.

    ``slowest`` keeps each statement's longest time."""
    started = time.perf_counter()
    for index, (statement, parameters) in enumerate(captured):
        begun = time.perf_counter()
        raw.execute(statement, parameters).fetchall()
        slowest[index] = max(slowest.get(index, 0), time.perf_counter() - begun)
    return time.perf_counter() - started


def use_case(day: dt.date) -> float:
    """Time ``service.run_daily_report`` once: build, store and mail (to ``.eml`` files)."""
    from shop.config import get_settings
    from shop.db import get_sessionmaker
    from shop.notifications.mailer import FileMailer
    from shop.reports import service

    settings = get_settings().model_copy(update={"report_recipients": "bench@example.com"})
    with tempfile.TemporaryDirectory() as mail, get_sessionmaker()() as session:
        started = time.perf_counter()
        result = service.run_daily_report(session, day=day, resend=False, settings=settings,
                                      mailer=FileMailer(Path(mail)), now=dt.datetime.now(dt.UTC))
        elapsed = time.perf_counter() - started
        assert result.built
        assert result.mailed
    return elapsed


def _what(statement: str) -> str:
    """A few words naming a statement: the tables it reads."""
    tables = dict.fromkeys(re.findall(r"(?:FROM|JOIN) (\w+)", statement))
    return "+".join(tables) or statement.split()[0]


if __name__ == "__main__":
    main()
