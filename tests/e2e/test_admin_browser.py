"""The admin pages in a real browser: Debian's headless Chromium, driven by Playwright,
against the API served by uvicorn, with real workers on RabbitMQ and PostgreSQL and the
dummy payment provider (faults injected at its boundary).

``SHOP_TEST_SCREENSHOTS=docs`` also writes the screenshots docs/admin.md shows.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from shop.payments.faults import write_rules
from tests.fixtures.api import ADMIN_TOKEN, free_port, order_body
from tests.fixtures.services import unavailable
from tests.fixtures.stack import Stack, statuses, wait_terminal, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package: never a downloaded browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[2]
SCRIPT_NAME = "<script>alert(1)</script>"


@pytest.fixture
def chromium() -> Iterator[Any]:
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (the dev extra)")
        raise
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=CHROMIUM_ARGS, timeout=60_000)
        yield browser
        browser.close()


@pytest.fixture
def served(dummy_stack: Stack) -> Iterator[str]:
    """The API as a real server on a free port, for the browser to reach."""
    from shop.api import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=free_port(),
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=10, what="uvicorn")
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(timeout=10)


def place(base: str, **overrides: Any) -> str:
    response = httpx.post(f"{base}/v1/orders", json=order_body(**overrides), timeout=30,
                          headers={"Idempotency-Key": str(uuid.uuid4())})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def captured_intents(stack: Stack, order_id: str) -> int:
    root = Path(stack.env["SHOP_DATA_DIR"]) / "dummy_payments"
    intents = [json.loads(p.read_text()) for p in root.glob("pi_dummy_*.json")]
    return sum(1 for i in intents
               if i["metadata"].get("order_id") == order_id and i["status"] == "succeeded")


def screenshot(page: Any, tmp_path: Path, name: str) -> None:
    """Into the test's directory; also into ``$SHOP_TEST_SCREENSHOTS`` when it is set."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    wanted = os.environ.get("SHOP_TEST_SCREENSHOTS")
    if wanted:
        folder = Path(wanted) if Path(wanted).is_absolute() else REPO / wanted
        shutil.copyfile(shot, folder / name)


def test_an_admin_retries_a_failed_order_in_a_browser_and_sees_it_confirmed(
        chromium: Any, dummy_stack: Stack, served: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    faults = Path(dummy_stack.env["SHOP_PAYMENT_FAULTS"])
    write_rules(faults, [{"op": "*", "mode": "unavailable", "times": None}])
    dummy_stack.start_worker("w1")
    dummy_stack.start_relay()
    stranded = place(served, name="Grace Hopper", email="grace@example.com")
    assert wait_terminal(dummy_stack, [stranded]) == {stranded: "failed"}
    write_rules(faults, [])  # the provider is back
    declined = place(served, name="Alan Turing", email="alan@example.com",
                     payment_method="pm_card_chargeDeclined")
    marked_up = place(served, name=SCRIPT_NAME, email="eve@example.com")
    assert wait_terminal(dummy_stack, [declined, marked_up]) == {
        declined: "failed", marked_up: "confirmed"}

    context = chromium.new_context(viewport={"width": 1440, "height": 900},
                                   http_credentials={"username": "alice",
                                                     "password": ADMIN_TOKEN})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{served}/admin/")
    row = page.locator(f'#failed tr[data-order="{stranded}"]')
    expect(row).to_contain_text("Grace Hopper")
    expect(row).to_contain_text("payment_unavailable")
    expect(page.locator(f'#failed tr[data-order="{declined}"]')).to_contain_text(
        "card_declined")
    expect(page.locator(f'#latest tr[data-order="{marked_up}"]')).to_contain_text(SCRIPT_NAME)
    screenshot(page, tmp_path, "admin.png")

    row.get_by_role("link", name="Retry").click()
    expect(page.get_by_role("heading", name="Retry this order?")).to_be_visible()
    assert statuses([stranded]) == {stranded: "failed"}  # asking changed nothing
    page.get_by_role("button", name="Yes, retry").click()
    expect(page.locator(".flash")).to_contain_text("Retry queued")
    expect(page.locator("#status")).to_have_text("confirmed", timeout=90_000)  # refreshes
    expect(page.locator("#timeline")).to_contain_text("order.retried_payment")
    expect(page.locator("#timeline tr", has_text="order.retried_payment")).to_contain_text(
        "alice")
    screenshot(page, tmp_path, "admin-order.png")

    assert statuses([stranded]) == {stranded: "confirmed"}
    assert captured_intents(dummy_stack, stranded) == 1  # charged once
    assert dialogs == []  # the customer's <script> never ran
    context.close()
