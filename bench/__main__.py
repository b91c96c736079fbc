"""``python -m bench`` (``make bench``): the workflow benchmark of issue 11, every case
on RabbitMQ and PostgreSQL, one table. See bench/README.md.

    python -m bench                                # every case, 2,000 orders each
    python -m bench --orders 300 --memory-orders 2000
    python -m bench --cases ceiling,shop --orders 500
    python -m bench --cases shop --profile         # case 3 under py-spy

The report benchmark is separate: ``python -m bench.reports``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from bench.cases import CASES, DEFAULT_CASES, Result
from bench.stack import Bench
from bench.table import machine, render


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--orders", type=int, default=2000,
                        help="orders timed in cases 1 to 4 (default 2000)")
    parser.add_argument("--warmup", type=int, default=20,
                        help="orders run through first, untimed (default 20)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="prefork pool size of each worker (default 2)")
    parser.add_argument("--pool", default="prefork",
                        help="pool of the shop's main worker (default prefork)")
    parser.add_argument("--payment-threads", type=int, default=0,
                        help="threads of the payments worker of cases 4 and burst "
                             "(default: `shop sizing --threads` for the case's settings)")
    parser.add_argument("--payment-latency-ms", type=int, default=250,
                        help="dummy provider latency in case 4 (default 250)")
    parser.add_argument("--burst-orders", type=int, default=2000,
                        help="orders of the burst case (default 2000)")
    parser.add_argument("--burst-limits", default="100,25", metavar="ACCOUNT,ENDPOINT",
                        help="requests/s the burst's dummy allows and its budget keeps to "
                             "(default 100,25: Stripe's live limits)")
    parser.add_argument("--burst-clients", type=int, default=32,
                        help="connections posting the burst (default 32)")
    parser.add_argument("--clients", type=int, default=8,
                        help="concurrent HTTP connections placing orders (default 8)")
    parser.add_argument("--connections", type=int, default=32,
                        help="wrk connections in case 5 (default 32)")
    parser.add_argument("--api-seconds", type=float, default=10,
                        help="length of each wrk run in case 5 (default 10)")
    parser.add_argument("--api-rounds", type=int, default=2,
                        help="alternating wrk runs per endpoint in case 5 (default 2)")
    parser.add_argument("--memory-orders", type=int, default=10000,
                        help="orders in case 7; RSS after 1,000 against after these")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds to wait for one batch of orders (default 1800)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the cases this many times, interleaved; the table shows "
                             "each rate's median (the load of a shared machine drifts)")
    parser.add_argument("--profile", action="store_true",
                        help="record case 3 and the burst's workers with py-spy (needs "
                             "py-spy in the venv)")
    parser.add_argument("--pg-server", default=os.environ.get(
        "SHOP_BENCH_SERVER_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL server whose user may create databases")
    parser.add_argument("--broker", default=os.environ.get(
        "SHOP_BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        help="RabbitMQ; a fresh vhost is made under it (rabbitmqctl on PATH)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the processes' logs (printed path)")
    args = parser.parse_args(argv)
    args.case_list = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(args.case_list) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    return args


def median(runs: list[Result]) -> Result:
    """The run with the median rate (the last run for cases without a rate)."""
    rated = sorted((r for r in runs if r.rate is not None), key=lambda r: r.rate or 0.0)
    if not rated:
        return runs[-1]
    chosen = rated[(len(rated) - 1) // 2] if len(rated) % 2 else rated[len(rated) // 2]
    if len(runs) > 1:
        rates = ", ".join(f"{r.rate:.1f}" for r in runs if r.rate is not None)
        chosen.note = (chosen.note + "; " if chosen.note else "") + f"rounds: {rates}/s"
    return chosen


def _raise_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by signal {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_on_signal)
    work = Path(tempfile.mkdtemp(prefix="shop-bench-"))
    bench = Bench(server_url=args.pg_server, broker_url=args.broker, work=work)
    rounds: dict[str, list[Result]] = {}
    started = time.monotonic()
    failed = False
    print(f"bench: {', '.join(args.case_list)}; logs in {work}", file=sys.stderr)
    try:
        for round_ in range(1, args.repeat + 1):
            for name in args.case_list:
                print(f"bench: {name} (round {round_}) ...", file=sys.stderr, flush=True)
                t0 = time.monotonic()
                try:
                    result = CASES[name](bench, args)
                finally:
                    bench.drop_case()
                rounds.setdefault(name, []).append(result)
                rate = f", {result.rate:.1f}/s" if result.rate else ""
                print(f"bench: {name} done in {time.monotonic() - t0:.0f} s{rate}",
                      file=sys.stderr, flush=True)
    except BaseException:
        failed = True
        raise
    finally:
        bench.close()
        results = {name: median(runs) for name, runs in rounds.items()}
        if results:
            print(render(results, args, machine=machine(), python=platform.python_version(),
                         elapsed=time.monotonic() - started))
        if not (failed or args.keep_logs or args.profile):
            shutil.rmtree(work, ignore_errors=True)
        elif failed or args.keep_logs:
            print(f"bench: logs kept in {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
