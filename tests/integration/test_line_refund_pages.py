"""The line refund on the order's admin page and in ``shop orders refund``: the same use
case as the API, one refund per form or key, CSRF like every admin form."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shop.db import session_scope
from shop.orders.refunds.models import RefundRequest
from shop.payments.faults import FaultyGateway
from tests.fixtures.admin_pages import AUTH, token_in
from tests.fixtures.refunds import confirmed, faulty_dummy, money, on_hand, run_refund_tasks


@pytest.fixture
def gateway(tmp_path: Path) -> FaultyGateway:
    return faulty_dummy(tmp_path)

ORIGIN = {"Origin": "http://testserver"}


def requests_of(order_id: uuid.UUID) -> list[tuple[int, list[tuple[str, int, bool]]]]:
    with session_scope() as session:
        return [(r.amount, [(x.sku, x.quantity, x.restock) for x in r.lines])
                for r in session.scalars(select(RefundRequest)
                                         .where(RefundRequest.order_id == order_id))]


def form_of(client: TestClient, order_id: uuid.UUID) -> dict[str, str]:
    shown = client.get(f"/admin/pages/orders/{order_id}/refund", auth=AUTH)
    assert shown.status_code == 200, shown.text
    key = re.search(r'name="key" value="([0-9a-f]+)"', shown.text)
    assert key is not None
    skus = dict(re.findall(r'name="(sku_\d+)" value="([A-Z-]+)"', shown.text))
    assert sorted(skus.values()) == ["MUG-BLUE", "TEE-M"]
    return {"csrf": token_in(shown), "key": key.group(1), **skus}


def test_the_order_page_offers_a_refund_whose_form_refunds_once_with_restock_per_line(
        client: TestClient, gateway: FaultyGateway) -> None:
    order_id = confirmed(client, gateway)
    mugs, tees = on_hand("MUG-BLUE"), on_hand("TEE-M")
    page = client.get(f"/admin/pages/orders/{order_id}", auth=AUTH)
    assert f'href="/admin/pages/orders/{order_id}/refund"' in page.text
    form = form_of(client, order_id)
    index = {sku: name.removeprefix("sku_") for name, sku in form.items()
             if name.startswith("sku_")}
    data = {**form, f"quantity_{index['MUG-BLUE']}": "2", f"restock_{index['MUG-BLUE']}": "on",
            f"quantity_{index['TEE-M']}": "1", "reason": "returned <b>unopened</b>"}
    for _ in range(2):  # a double click sends the same form twice
        sent = client.post(f"/admin/pages/orders/{order_id}/refund", auth=AUTH, data=data,
                           headers=ORIGIN, follow_redirects=False)
        assert sent.status_code == 303, sent.text
        assert sent.headers["location"] == f"/admin/pages/orders/{order_id}?done=refund"
    assert requests_of(order_id) == [(5500, [("MUG-BLUE", 2, True), ("TEE-M", 1, False)])]
    run_refund_tasks(gateway)
    assert money(order_id)[1:3] == (5500, "refunded")
    assert (on_hand("MUG-BLUE"), on_hand("TEE-M")) == (mugs + 2, tees)
    shown = client.get(f"/admin/pages/orders/{order_id}?done=refund", auth=AUTH)
    assert "Refund queued" in shown.text
    assert "returned &lt;b&gt;unopened&lt;/b&gt;" in shown.text  # text, never markup
    assert "restocked" in shown.text
    assert f'/admin/pages/orders/{order_id}/refund"' not in shown.text  # nothing left


def test_the_refund_form_refuses_bad_input_a_foreign_origin_and_a_missing_token(
        client: TestClient, gateway: FaultyGateway) -> None:
    order_id = confirmed(client, gateway)
    form = form_of(client, order_id)
    mug = next(n.removeprefix("sku_") for n, v in form.items() if v == "MUG-BLUE")
    url = f"/admin/pages/orders/{order_id}/refund"
    too_many = client.post(url, auth=AUTH, headers=ORIGIN, data={
        **form, f"quantity_{mug}": "3", "reason": "r"})
    assert too_many.status_code == 422
    assert "MUG-BLUE quantity" in too_many.text
    nothing = client.post(url, auth=AUTH, headers=ORIGIN, data={**form, "reason": "r"})
    assert nothing.status_code == 422
    foreign = client.post(url, auth=AUTH, headers={"Origin": "https://evil.example"},
                          data={**form, f"quantity_{mug}": "1", "reason": "r"})
    assert foreign.status_code == 403
    tokenless = client.post(url, auth=AUTH, headers=ORIGIN,
                            data={**form, "csrf": "", f"quantity_{mug}": "1", "reason": "r"})
    assert tokenless.status_code == 403
    assert requests_of(order_id) == []


def test_the_cli_refunds_lines_once_per_key_and_names_what_is_wrong(
        client: TestClient, gateway: FaultyGateway, db_url: str) -> None:
    order_id = confirmed(client, gateway)
    env = {**os.environ, "SHOP_DATABASE_URL": db_url}

    def shop(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shop.cli", "orders", "refund",
                               str(order_id), *args], env=env, capture_output=True, text=True,
                              timeout=60)

    args = ("--line", "MUG-BLUE:1:restock", "--line", "TEE-M:1", "--reason", "damaged",
            "--key", "ticket-42")
    first, again = shop(*args), shop(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "4000 USD" in first.stdout
    assert "MUG-BLUE  1 x 1500 = 1500  restock" in first.stdout
    assert first.stdout.splitlines()[0] == again.stdout.splitlines()[0]
    assert requests_of(order_id) == [(4000, [("MUG-BLUE", 1, True), ("TEE-M", 1, False)])]
    past = shop("--line", "TEE-M:1", "--reason", "again")
    assert past.returncode == 1
    assert "lines[0].quantity" in past.stdout
    malformed = shop("--line", "MUG-BLUE", "--reason", "r")
    assert malformed.returncode == 1
    assert "SKU:QTY" in malformed.stdout
    zero = shop("--line", "MUG-BLUE:0", "--reason", "r")
    assert zero.returncode == 1
    assert "lines[0].quantity" in zero.stdout
    unknown = subprocess.run([sys.executable, "-m", "shop.cli", "orders", "refund",
                              str(uuid.uuid4()), "--line", "MUG-BLUE:1", "--reason", "r"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 1
    assert "no order" in unknown.stdout
    shown = subprocess.run([sys.executable, "-m", "shop.cli", "orders", "show", str(order_id)],
                           env=env, capture_output=True, text=True, timeout=60)
    assert "refund " in shown.stdout
    assert "MUG-BLUE x1 restock" in shown.stdout
    assert len(requests_of(order_id)) == 1
