"""The ``shop`` command: migrate, seed, relay, dev, report, orders, reconcile, doctor, sizing,
settings-doc, broker.

A bad ``SHOP_`` setting ends any command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr, ValidationError

from shop import logs
from shop.cli import broker as broker_commands
from shop.config import Settings, get_settings, redact_url
from shop.messaging.broker import QUEUES
from shop.orders.admin import cli as orders_commands

if TYPE_CHECKING:
    from shop.reports.service import Result


def _migrate(_: argparse.Namespace) -> int:
    from shop.migrate import upgrade

    upgrade()
    print("database is at the latest schema")
    return 0


def _seed(_: argparse.Namespace) -> int:
    from shop.cli.seed import seed_catalogue
    from shop.db import session_scope

    with session_scope() as session:
        added = seed_catalogue(session)
    print(f"seeded {added} products" if added else "catalogue already has products")
    return 0


def _relay(_: argparse.Namespace) -> int:
    from shop.celery import app
    from shop.messaging import relay
    from shop.messaging.broker import declare_topology

    logs.configure(get_settings().log_format)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    relay.run(app, stop, on_connect=declare_topology if get_settings().broker_is_amqp else None)
    return 0


def _reconcile(_: argparse.Namespace) -> int:
    import uuid

    from shop.db import session_scope
    from shop.orders.provider.reconcile import reconcile
    from shop.payments.providers import get_gateway

    with session_scope() as session:
        tally = reconcile(session, gateway=get_gateway(), owner=f"cli:{uuid.uuid4().hex[:8]}")
    mended = ", ".join(f"{what}: {count}" for what, count in sorted(tally.items()))
    print(f"reconciled with the payment provider: {mended or 'nothing to do'}")
    return 0


def _doctor(_: argparse.Namespace) -> int:
    """Check the configuration and every service it names; 1 when something is wrong."""
    from shop.cli import doctor

    findings = doctor.examine(get_settings())
    for finding in findings:
        print(finding.line(), flush=True)
    print(doctor.summary(findings))
    return 1 if any(f.status == "FAIL" for f in findings) else 0


def _sizing(args: argparse.Namespace) -> int:
    """Print the payments worker's pool for the provider budget and latency."""
    from shop.payments import sizing
    from shop.payments.budget import Limits

    limits = get_settings().provider_limits
    budget = None if limits is None else Limits(account_rps=limits[0], endpoint_rps=limits[1])
    shape = sizing.size(budget, latency_ms=args.latency_ms, orders_per_second=args.rate)
    if args.threads:
        print(shape.threads)
        return 0
    shown = budget or sizing.STRIPE_LIVE
    print(f"provider budget: {shown.account_rps:g} requests/s for the account, "
          f"{shown.endpoint_rps:g} per endpoint"
          + (" (unpaced: Stripe's live limits assumed)" if budget is None else ""))
    print(f"ceiling: {sizing.ceiling(shown):.1f} orders/s at {sizing.CALLS_PER_ORDER} "
          "calls per order")
    print(f"at {shape.orders_per_second:.1f} orders/s ({shape.calls_per_second:.1f} calls/s) "
          f"and {shape.latency_ms:g} ms per call:")
    print(f"  payments worker: --pool threads --concurrency {shape.threads}")
    print(f"  SHOP_DB_POOL_SIZE={shape.threads} (one connection per thread)")
    return 0


def _settings_doc(args: argparse.Namespace) -> int:
    """Print docs/settings.md (or, with ``--env``, .env.example) as the code defines them."""
    from shop.cli import settings_doc

    print(settings_doc.env_example() if args.env else settings_doc.page(), end="")
    return 0


def parse_day(text: str) -> dt.date | None:
    """``YYYY-MM-DD`` as a date, or None if it is not exactly that, or not a real day."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def _report_daily(args: argparse.Namespace) -> int:
    """Build (unless stored) and mail (unless mailed) a day's report; print its text."""
    from shop.db import session_scope, utcnow
    from shop.exceptions import BusyError
    from shop.notifications.mailer import build_mailer
    from shop.reports import rendering, service

    name = "shop report daily"
    day = parse_day(args.date)
    if day is None:
        print(f"{name}: --date must be a day as YYYY-MM-DD, not {args.date!r}", file=sys.stderr)
        return 2
    settings = get_settings()
    with session_scope() as session:
        try:
            result = service.run_daily_report(session, day=day, resend=args.resend,
                                          settings=settings, mailer=build_mailer(settings),
                                          now=utcnow())
        except service.ReportError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 2
        except BusyError:
            print(f"{name}: the report for {day} is being mailed right now; try again shortly",
                  file=sys.stderr)
            return 1
        text = rendering.text(result.report.data)
    print(text, end="")
    print(f"{name}: {day} {'built now' if result.built else 'already stored, not rebuilt'}; "
          f"{_mail_line(result, settings.recipients)}", file=sys.stderr)
    return 1 if result.mail_failure is not None else 0


def _mail_line(result: Result, recipients: list[str]) -> str:
    if result.mail_failure is not None:
        return f"NOT mailed ({result.mail_failure}); stored unsent, resend with --resend"
    if result.mailed:
        return f"mailed to {', '.join(recipients)}"
    if not recipients:
        return "not mailed (SHOP_REPORT_RECIPIENTS is empty)"
    return "already mailed (--resend mails it again)"


def dev_commands(*, host: str, port: int) -> dict[str, list[str]]:
    """The four processes of a deployment, as ``shop dev`` starts them."""
    py = sys.executable
    celery = [py, "-m", "celery", "-A", "shop"]
    embedded = [] if get_settings().broker_is_amqp else [
        "--without-gossip", "--without-mingle", "--without-heartbeat"]
    level = get_settings().log_level.lower()  # the shop applies SHOP_LOG_LEVEL anyway
    return {
        "api": [py, "-m", "uvicorn", "shop.api:app", "--host", host, "--port", str(port)],
        "worker": [*celery, "worker", "-l", level, "--concurrency", "2",
                   "-Q", ",".join(QUEUES), *embedded],
        "beat": [*celery, "beat", "-l", level, "-s",
                 str(get_settings().data_dir / "celerybeat-schedule")],
        "relay": [py, "-m", "shop.cli", "relay"],
    }


def listen_problem(host: str, port: int) -> str | None:
    """Why the API could not listen on ``host:port``, or None if it can.

    Binds the way uvicorn does (``SO_REUSEADDR``), so a port in TIME_WAIT passes
    but one that another process listens on does not.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"port {port} on {host} is already in use by another program; "
                        f"choose another with --port (make run DEV_ARGS=\"--port {port + 1}\")")
            return f"cannot listen on {host}:{port} ({exc}); choose another --host or --port"
    return None


def _stop_all(procs: dict[str, subprocess.Popen[bytes]], *, grace: float = 15) -> None:
    """SIGTERM every child still running, then SIGKILL what is left after ``grace`` s."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _supervise(commands: dict[str, list[str]], env: dict[str, str],
               *, host: str, port: int) -> int:
    """Run ``commands`` until Ctrl-C/SIGTERM (exit 0) or until one exits (exit 1).

    Either way every other child is stopped before returning: no orphans.
    """
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, cmd in commands.items():
            procs[name] = subprocess.Popen(cmd, env=env)
        dead: str | None = None
        while not stopping and dead is None:
            time.sleep(0.2)
            dead = next((name for name, p in procs.items() if p.poll() is not None), None)
    finally:
        _stop_all(procs)
    if stopping:  # Ctrl-C reaches the children too: any of them may have exited first
        return 0
    assert dead is not None
    print(f"shop dev: {dead} exited with {procs[dead].returncode}; stopped the others",
          file=sys.stderr)
    if dead == "api" and (problem := listen_problem(host, port)):
        print(f"shop dev: {problem}", file=sys.stderr)
    return 1


def _dev(args: argparse.Namespace) -> int:
    if problem := listen_problem(args.host, args.port):
        print(f"shop dev: {problem}", file=sys.stderr)
        return 1
    settings = get_settings()
    env = dict(os.environ)
    # A token made up for this run is shown; one the user set is theirs and stays unsaid.
    shown = "the one in SHOP_ADMIN_TOKEN"
    if settings.admin_token is None:
        shown = env["SHOP_ADMIN_TOKEN"] = secrets.token_urlsafe(24)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    mail = "SMTP (SHOP_SMTP_URL)" if settings.smtp_url else f"{settings.mail_path}/*.eml"
    print(f"shop dev: API on http://{args.host}:{args.port}  (docs at /docs)")
    print(f"shop dev: admin token {shown}")
    print(f"shop dev: emails go to {mail}; payments: {settings.provider}; "
          f"broker: {settings.broker_url.split('@')[-1]}", flush=True)
    return _supervise(dev_commands(host=args.host, port=args.port), env,
                      host=args.host, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shop", description=__doc__)
    parser.add_argument("--version", action="version", version=f"shop {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="alembic upgrade head").set_defaults(run=_migrate)
    sub.add_parser("seed", help="load the demo catalogue if empty").set_defaults(run=_seed)
    sub.add_parser("relay", help="publish the outbox to the broker").set_defaults(run=_relay)
    sub.add_parser("reconcile", help="settle payments with the provider now").set_defaults(
        run=_reconcile)
    sub.add_parser("doctor", help="check the configuration and that every service "
                   "answers; exit 1 when something is wrong").set_defaults(run=_doctor)
    sizing = sub.add_parser("sizing", help="the payments worker's threads for the provider "
                            "budget and latency (docs/deployment.md)")
    sizing.add_argument("--latency-ms", type=float, default=300.0,  # sizing.DEFAULT_LATENCY_MS
                        help="the provider's usual time per call (default 300)")
    sizing.add_argument("--rate", type=float, default=None, metavar="ORDERS_PER_S",
                        help="orders a second to size for (default: the budget's ceiling)")
    sizing.add_argument("--threads", action="store_true",
                        help="print only the thread count (for --concurrency)")
    sizing.set_defaults(run=_sizing)
    settings = sub.add_parser("settings-doc", help="print the settings page (docs/settings.md) "
                              "written from the code")
    settings.add_argument("--env", action="store_true",
                          help="print .env.example instead: every setting at its default")
    settings.set_defaults(run=_settings_doc)
    orders_commands.register(sub)
    broker_commands.register(sub)

    report = sub.add_parser("report", help="sales reports").add_subparsers(
        dest="report", required=True)
    daily = report.add_parser("daily", help="build and mail a local day's report once; "
                                            "print it as text")
    daily.add_argument("--date", required=True, metavar="YYYY-MM-DD",
                       help="the shop's local day (SHOP_TIMEZONE); it must have ended")
    daily.add_argument("--resend", action="store_true",
                       help="mail the stored report again (it is not rebuilt)")
    daily.set_defaults(run=_report_daily)
    dev = sub.add_parser("dev", help="API, worker, beat and relay in one process tree")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(run=_dev)
    return parser


def _version() -> str:
    try:
        return version("shop")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def settings_problem(exc: ValidationError) -> str:
    """A settings error as one line naming each variable, never quoting a secret."""
    prefix = Settings.model_config.get("env_prefix", "")
    problems = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        name = f"{prefix}{field.upper()}" if field else "settings"
        message = error["msg"].removeprefix("Value error, ").removeprefix(f"{name} ")
        problems.append(f"{name}: {message}{_shown(field, error['input'])}")
    return "; ".join(problems)


def _shown(field: str, value: Any) -> str:
    """`` (got …)`` for a value safe to print: no secret, no password inside a URL."""
    info = Settings.model_fields.get(field)
    if info is None or not isinstance(value, str) or "SecretStr" in str(info.annotation):
        return ""
    if value == "" or isinstance(value, SecretStr):
        return ""
    return f" (got {redact_url(value)[:80]!r})"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        get_settings()
        return int(args.run(args))
    except ValidationError as exc:
        if exc.title != Settings.__name__:
            raise
        print(f"shop: configuration error: {settings_problem(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
