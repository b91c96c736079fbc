"""``python -m bench.trace``: follow one order through the shop's own code, as a reader
would, and count the rooms it walks through.

One order is posted to the API (in-process), then each workflow task the outbox holds
is run in turn (in-process, no broker, the dummy provider, emails written as files)
until the confirmation email is sent. A profiler hook notes every call of a function
defined under ``shop/``. It prints:

- files: distinct modules of ``shop/`` the path calls into;
- folders: distinct folders of those modules;
- crossings: consecutive calls whose modules sit in different folders;
- returns: crossings into a folder the path had already left before;
- the same four without the ground floor (settings, sessions, logs, metrics, errors),
  which every room calls;
- the loose modules in ``shop/`` and the modules at the top of ``shop/orders/``.

It runs against whatever checkout it is started from (the task names and commands it
uses exist in every layout since 0.1), so a before-and-after is two runs::

    .venv/bin/python -m bench.trace
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from itertools import pairwise
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHOP = ROOT / "shop"
ORDER = {"email": "ada@example.com", "name": "Ada Lovelace",
         "lines": [{"sku": "MUG-BLUE", "quantity": 1}], "payment_method": "pm_card_visa",
         "shipping_address": {"line1": "12 St James's Square", "city": "London",
                              "postal_code": "SW1Y 4LB", "country": "GB"}}


def configure(work: Path) -> None:
    os.environ.update({
        "SHOP_DATABASE_URL": f"sqlite:///{work}/trace.sqlite3",
        "SHOP_BROKER_URL": "memory://", "SHOP_PAYMENT_PROVIDER": "dummy",
        "SHOP_DATA_DIR": str(work / "data"), "SHOP_PUBLISH_ON_COMMIT": "false",
    })
    for command in ("migrate", "seed"):
        subprocess.run([sys.executable, "-m", "shop.cli", command], check=True,
                       capture_output=True, cwd=ROOT)


def run_one_order() -> list[str]:
    """The modules of every shop function called, in call order."""
    from fastapi.testclient import TestClient
    from sqlalchemy import select

    from shop.api import create_app
    from shop.celery import app as celery_app
    from shop.db import session_scope
    from shop.messaging.models import OutboxMessage

    celery_app.loader.import_default_modules()
    calls: list[str] = []

    def note(frame: FrameType, event: str, _: Any) -> None:
        if event == "call":
            path = frame.f_code.co_filename
            if path.startswith(str(SHOP)) and path.endswith(".py"):  # not templates
                calls.append(str(Path(path).relative_to(SHOP)))

    client = TestClient(create_app())
    sys.setprofile(note)
    try:
        order_id = client.post("/v1/orders", json=ORDER).json()["id"]
        done: set[str] = set()
        for _ in range(20):
            with session_scope() as session:
                pending = [(str(m.id), m.name, dict(m.payload or {}))
                           for m in session.scalars(select(OutboxMessage)
                                                    .order_by(OutboxMessage.created_at))
                           if str(m.id) not in done and m.name.startswith("shop.orders.")]
            if not pending:
                break
            message_id, name, kwargs = pending[0]
            done.add(message_id)
            celery_app.tasks[name](**kwargs)
            if name.endswith("send_confirmation"):
                break
    finally:
        sys.setprofile(None)
    assert uuid.UUID(order_id)
    return calls


GROUND_FLOOR = {"config.py", "db.py", "logs.py", "metrics.py", "exceptions.py"}


def measure(calls: list[str], *, prefix: str = "") -> dict[str, int]:
    folders = [str(Path(c).parent) for c in calls]
    crossings = returns = 0
    left: set[str] = set()
    for before, after in pairwise(folders):
        if before != after:
            crossings += 1
            if after in left:
                returns += 1
            left.add(before)
    return {f"{prefix}files": len(set(calls)), f"{prefix}folders": len(set(folders)),
            f"{prefix}crossings": crossings, f"{prefix}returns": returns}


def layout() -> dict[str, int]:
    return {"loose modules in shop/": len(list(SHOP.glob("*.py"))),
            "modules at the top of shop/orders/": len(list((SHOP / "orders").glob("*.py")))}


def main() -> int:
    with tempfile.TemporaryDirectory() as work:
        configure(Path(work))
        calls = run_one_order()
        # The ground floor (settings, sessions, logs, metrics, the error bases) is called
        # from every room; the second count follows the path through the wings only.
        wings = [c for c in calls if c not in GROUND_FLOOR]
        figures = {**measure(calls), **measure(wings, prefix="without the ground floor: "),
                   **layout()}
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
