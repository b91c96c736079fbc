"""One order's trail in the logs of every process, and the metrics that move with it."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.api import free_port, order_body
from tests.fixtures.stack import Stack, wait_terminal, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]
STEPS = ("check_inventory", "charge_payment", "reserve_stock", "capture_payment",
         "send_confirmation", "request_fulfillment")


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue  # Celery's banner, uvicorn's own lines
        if isinstance(line, dict):
            lines.append(line)
    return lines


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "")
    found = re.search(pattern + r" (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def observed(dummy_stack: Stack, tmp_path: Path) -> tuple[Stack, str, str]:
    """The API as its own process, JSON logs everywhere, the relay carrying every
    message (so its trail shows too), and the workers' metrics on a port."""
    prom = tmp_path / "prom"
    prom.mkdir()
    api_port, metrics_port = free_port(), free_port()
    dummy_stack.env.update({"SHOP_LOG_FORMAT": "json", "SHOP_PUBLISH_ON_COMMIT": "false"})
    dummy_stack.start("api", "-m", "uvicorn", "shop.api:app", "--port", str(api_port))
    dummy_stack.start("w1", "-m", "celery", "-A", "shop", "worker", "-l", "info", "-c", "2",
                      "-n", "w1@%h", "-Q", "orders,payments,notifications,reports",
                      "--without-gossip", "--without-mingle",
                      env={"PROMETHEUS_MULTIPROC_DIR": str(prom),
                           "SHOP_METRICS_PORT": str(metrics_port)})
    dummy_stack.start_relay()
    api = f"http://127.0.0.1:{api_port}"
    wait_until(lambda: _answers(f"{api}/livez") and _answers(
        f"http://127.0.0.1:{metrics_port}/metrics"), timeout=30, what="api and metrics",
        stack=dummy_stack)
    return dummy_stack, api, f"http://127.0.0.1:{metrics_port}"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_one_grep_follows_a_checkout_into_every_step_with_emails_masked(
        observed: tuple[Stack, str, str]) -> None:
    stack, api, _ = observed
    request_id = f"trail-{uuid.uuid4().hex[:8]}"
    response = httpx.post(f"{api}/v1/orders", json=order_body(email="ada.lovelace@example.com"),
                          headers={"X-Request-ID": request_id}, timeout=30)
    assert response.headers["X-Request-ID"] == request_id
    order_id = response.json()["id"]
    assert wait_terminal(stack, [order_id]) == {order_id: "confirmed"}
    wait_until(lambda: _trail(stack, "relay", request_id, order_id), timeout=20,
               what="the relay's lines", stack=stack)

    assert _trail(stack, "api", request_id, order_id)
    worker = wait_until(lambda: _every_step(stack, request_id, order_id), timeout=20,
                        what="a line for every step", stack=stack)
    assert all(line.get("task_id") for line in worker)
    for name in ("api", "relay", "w1"):
        assert "ada.lovelace@example.com" not in (stack.log_dir / f"{name}.log").read_text()


def _every_step(stack: Stack, request_id: str, order_id: str) -> list[dict[str, Any]] | None:
    lines = _trail(stack, "w1", request_id, order_id)
    seen = {line.get("task_name", "").rsplit(".", 1)[-1] for line in lines}
    return lines if seen >= set(STEPS) else None


def _trail(stack: Stack, name: str, request_id: str, order_id: str) -> list[dict[str, Any]]:
    return [line for line in json_lines(stack.log_dir / f"{name}.log")
            if line.get("request_id") == request_id and line.get("order_id") == order_id]


def test_the_counters_and_histograms_move_with_a_confirmed_and_a_failed_order(
        observed: tuple[Stack, str, str]) -> None:
    stack, api, worker_metrics = observed
    before_api = httpx.get(f"{api}/metrics").text
    placed_before = sample(before_api, "shop_orders_placed_total")
    confirmed = httpx.post(f"{api}/v1/orders", json=order_body()).json()["id"]
    declined = httpx.post(f"{api}/v1/orders",
                          json=order_body(payment_method="pm_card_chargeDeclined")).json()["id"]
    assert wait_terminal(stack, [confirmed, declined]) == {confirmed: "confirmed",
                                                           declined: "failed"}
    api_text = httpx.get(f"{api}/metrics").text
    assert sample(api_text, "shop_orders_placed_total") == placed_before + 2
    assert "shop_outbox_backlog" in api_text
    assert "shop_outbox_oldest_age_seconds" in api_text
    text = wait_until(lambda: _after(worker_metrics), timeout=20, what="worker metrics",
                      stack=stack)
    assert sample(text, "shop_orders_confirmed_total") == 1
    assert sample(text, "shop_orders_failed_total", reason="card_declined", step="payment") == 1
    assert sample(text, "shop_step_duration_seconds_count",
                  task="shop.orders.check_inventory") == 2
    assert sample(text, "shop_provider_call_duration_seconds_count",
                  operation="capture", outcome="ok") == 1
    # The card declines on the confirming create (issue 19: one call, not create then
    # confirm).
    assert sample(text, "shop_provider_call_duration_seconds_count",
                  operation="create_intent", outcome="declined") == 1


def _after(url: str) -> str | None:
    text = httpx.get(f"{url}/metrics").text
    return text if "shop_orders_confirmed_total 1.0" in text else None
