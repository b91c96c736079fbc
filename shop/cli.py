"""The ``shop`` command: migrate, seed, relay, dev."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from shop.config import get_settings


def _migrate(_: argparse.Namespace) -> int:
    from shop.migrations import upgrade

    upgrade()
    print("database is at the latest schema")
    return 0


def _seed(_: argparse.Namespace) -> int:
    from shop.db import session_scope
    from shop.seed import seed_catalogue

    with session_scope() as session:
        added = seed_catalogue(session)
    print(f"seeded {added} products" if added else "catalogue already has products")
    return 0


def _relay(_: argparse.Namespace) -> int:
    from shop.celery import app
    from shop.messaging import relay

    logging.basicConfig(level=logging.INFO, format="%(asctime)s relay %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    relay.run(app, stop)
    return 0


def dev_commands(*, host: str, port: int) -> dict[str, list[str]]:
    """The four processes of a deployment, as ``shop dev`` starts them."""
    py = sys.executable
    celery = [py, "-m", "celery", "-A", "shop"]
    embedded = [] if get_settings().broker_is_amqp else [
        "--without-gossip", "--without-mingle", "--without-heartbeat"]
    return {
        "api": [py, "-m", "uvicorn", "shop.api:app", "--host", host, "--port", str(port)],
        "worker": [*celery, "worker", "-l", "info", "--concurrency", "2",
                   "-Q", "orders,payments,notifications,reports", *embedded],
        "beat": [*celery, "beat", "-l", "info", "-s",
                 str(get_settings().data_dir / "celerybeat-schedule")],
        "relay": [py, "-m", "shop.cli", "relay"],
    }


def _dev(args: argparse.Namespace) -> int:
    settings = get_settings()
    env = dict(os.environ)
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    if token is None:
        token = secrets.token_urlsafe(24)
        env["SHOP_ADMIN_TOKEN"] = token
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    mail = "SMTP (SHOP_SMTP_URL)" if settings.smtp_url else f"{settings.mail_path}/*.eml"
    print(f"shop dev: API on http://{args.host}:{args.port}  (docs at /docs)")
    print(f"shop dev: admin token {token}")
    print(f"shop dev: emails go to {mail}; payments: {settings.provider}; "
          f"broker: {settings.broker_url.split('@')[-1]}")
    procs = {name: subprocess.Popen(cmd, env=env)
             for name, cmd in dev_commands(host=args.host, port=args.port).items()}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(p.poll() is None for p in procs.values()):
        time.sleep(0.2)
    for name, proc in procs.items():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        elif not stopping:
            print(f"shop dev: {name} exited with {proc.returncode}; stopping", file=sys.stderr)
    deadline = time.monotonic() + 15
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="alembic upgrade head").set_defaults(run=_migrate)
    sub.add_parser("seed", help="load the demo catalogue if empty").set_defaults(run=_seed)
    sub.add_parser("relay", help="publish the outbox to the broker").set_defaults(run=_relay)
    dev = sub.add_parser("dev", help="API, worker, beat and relay in one process tree")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(run=_dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
