"""``SHOP_LOG_FORMAT=json``: every line of every process is one JSON object (uvicorn's
too, tracebacks inside their line), the order's lines carry its request id, and no
customer's address shows in the clear. (And a prefork worker serving its metrics without
``PROMETHEUS_MULTIPROC_DIR`` still shows its pool's figures.)"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from shop.celery import app as celery_app
from tests.fixtures.api import free_port, order_body
from tests.fixtures.stack import Stack, wait_terminal, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]
EMAIL = "ada.lovelace@example.com"
POISON = "poison.pill@example.com"
PROCESSES = ("api", "w1", "relay", "beat")


def parsed(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` as JSON (fails on the first line that is not an object)."""
    lines = []
    for number, raw in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            pytest.fail(f"{path.name}:{number} is not JSON: {raw!r}")
        assert isinstance(line, dict), f"{path.name}:{number}: {raw!r}"
        lines.append(line)
    return lines


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_every_line_of_every_process_is_json_masked_and_the_orders_carry_the_request_id(
        dummy_stack: Stack, tmp_path: Path) -> None:
    stack = dummy_stack
    port, metrics_port = free_port(), free_port()
    stack.env.update({"SHOP_LOG_FORMAT": "json", "SHOP_PUBLISH_ON_COMMIT": "false"})
    stack.start("api", "-m", "uvicorn", "shop.api:app", "--port", str(port))
    stack.start("w1", "-m", "celery", "-A", "shop", "worker", "-l", "info", "-c", "2",
                "-n", "w1@%h", "-Q", "orders,payments,notifications,reports",
                "--without-gossip", "--without-mingle",
                env={"SHOP_METRICS_PORT": str(metrics_port)})
    stack.start_relay()
    stack.start("beat", "-m", "celery", "-A", "shop", "beat", "-l", "info",
                "-s", str(tmp_path / "celerybeat-schedule"))
    api = f"http://127.0.0.1:{port}"
    wait_until(lambda: _answers(f"{api}/livez"), timeout=30, what="the api", stack=stack)

    request_id = f"json-{uuid.uuid4().hex[:8]}"
    response = httpx.post(f"{api}/v1/orders", json=order_body(email=EMAIL),
                          headers={"X-Request-ID": request_id}, timeout=30)
    order_id = response.json()["id"]
    assert wait_terminal(stack, [order_id]) == {order_id: "confirmed"}
    # No PROMETHEUS_MULTIPROC_DIR given: the worker made its own, so the port shows what
    # its pool's processes counted.
    assert "PROMETHEUS_MULTIPROC_DIR" not in stack.env
    wait_until(lambda: "shop_orders_confirmed_total 1.0" in httpx.get(
        f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text, timeout=20,
        what="the pool's figures on the worker's port", stack=stack)
    httpx.get(f"{api}/v1/orders/{uuid.uuid4()}", timeout=10)  # a 404's access line
    # A poison message: its step raises (a traceback), with an address for an order id.
    celery_app.send_task("shop.orders.check_inventory", kwargs={"order_id": POISON})
    wait_until(lambda: any("error" in line for line in parsed(stack.log_dir / "w1.log")),
               timeout=30, what="the poison message's traceback", stack=stack)
    wait_until(lambda: any(line.get("logger", "").startswith("celery.beat")
                           for line in parsed(stack.log_dir / "beat.log")),
               timeout=30, what="beat's lines", stack=stack)
    stack.stop_all()  # the shutdown lines too

    lines = {name: parsed(stack.log_dir / f"{name}.log") for name in PROCESSES}
    for name in PROCESSES:
        text = (stack.log_dir / f"{name}.log").read_text()
        assert lines[name], f"{name} wrote nothing"
        for plain in (EMAIL, POISON, "ada.lovelace", "poison.pill"):
            assert plain not in text, name

    access = [line for line in lines["api"] if line["logger"] == "uvicorn.access"]
    checkout = [line for line in access if "POST /v1/orders" in line["message"]]
    assert [line.get("request_id") for line in checkout] == [request_id]
    assert any(" 404" in line["message"] and line.get("request_id") for line in access)
    assert any(line["logger"] == "uvicorn.error" for line in lines["api"])

    steps = [line for line in lines["w1"] if line.get("order_id") == order_id]
    assert steps
    assert all(line.get("request_id") == request_id for line in steps)
    assert {line.get("task_name", "").rsplit(".", 1)[-1] for line in steps} >= {
        "check_inventory", "charge_payment", "reserve_stock"}
    errors = [line for line in lines["w1"] if "error" in line]
    assert errors
    assert all(line["error"].startswith("Traceback") for line in errors)
    assert any(line.get("order_id") == "p***@example.com" for line in errors)
    assert any(line["logger"] == "shop.messaging.relay" for line in lines["relay"])
