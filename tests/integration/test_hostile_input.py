"""Hostile values in every field of the storefront, admin and webhook routes, on
PostgreSQL (SQLite accepts what PostgreSQL refuses): a clear 4xx or the value stored
exactly as sent, never a 5xx, and nothing half-written."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shop.db import session_scope
from shop.orders.models import Order
from tests.fixtures.api import ADMIN_TOKEN, count_rows, order_body
from tests.fixtures.webhooks import WEBHOOK_SECRET, sign

pytestmark = [pytest.mark.postgres]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

HOSTILE = {
    "sql": "'; DROP TABLE orders; --",
    "sql-unicode-quote": "\u02bc OR 1=1 --",
    "html": "<img src=x onerror=alert(1)>",
    "template": "{{ 7*7 }}{% raw %}",
    "right-to-left override": "Ada\u202egpj.exe",
    "zero-width": "A\u200bd\u200da\ufeff",
    "ansi escape": "\x1b[2J\x1b[31mred",
    "NUL": "Ada\x00Lovelace",
    "lone surrogate": "\ud800",
    "1 MB": "x" * 1_000_000,
    "emoji and combining": "Zoë \U0001f600 e\u0301",
}
FIELDS: dict[str, Any] = {
    "email": lambda v: {"email": v},
    "name": lambda v: {"name": v},
    "sku": lambda v: {"lines": [{"sku": v, "quantity": 1}]},
    "payment_method": lambda v: {"payment_method": v},
    "line1": lambda v: {"shipping_address": {**order_body()["shipping_address"], "line1": v}},
    "city": lambda v: {"shipping_address": {**order_body()["shipping_address"], "city": v}},
    "country": lambda v: {"shipping_address": {**order_body()["shipping_address"],
                                               "country": v}},
}


@pytest.fixture
def db_url(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SHOP_STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    return pg_url


def post_json(client: TestClient, path: str, body: object,
              headers: dict[str, str] | None = None) -> Any:
    # ASCII-escaped JSON, as a client would send a lone surrogate or a NUL.
    return client.post(path, content=json.dumps(body),
                       headers={"Content-Type": "application/json", **(headers or {})})


@pytest.mark.parametrize("field", FIELDS)
def test_a_hostile_value_in_any_order_field_is_refused_or_stored_as_sent(
        client: TestClient, field: str) -> None:
    accepted = 0
    for case, value in HOSTILE.items():
        response = post_json(client, "/v1/orders", order_body(**FIELDS[field](value)))
        assert response.status_code in (202, 413, 422), (case, response.text[:300])
        if response.status_code == 422:
            assert response.json()["fields"], (case, response.text[:300])
        if response.status_code != 202:
            assert count_rows(Order) == accepted, case  # nothing half-written
            continue
        accepted += 1
        with session_scope() as session:
            order = session.get_one(Order, uuid.UUID(response.json()["id"]))
            stored = {"email": order.email, "name": order.name,
                      "line1": order.shipping_address.get("line1"),
                      "city": order.shipping_address.get("city")}
        if field in stored:
            assert stored[field] == value, case  # text, not code: the SQL never ran


def test_a_hostile_value_in_a_product_is_refused_or_stored_as_sent(
        client: TestClient) -> None:
    for case, value in HOSTILE.items():
        body = {"name": value, "price": 500, "currency": "GBP", "stock": 3}
        response = client.put("/admin/products/HOSTILE", content=json.dumps(body),
                              headers={"Content-Type": "application/json", **ADMIN})
        assert response.status_code in (200, 201, 413, 422), (case, response.text[:300])
        names = [p["name"] for p in client.get("/v1/products").json()
                 if p["sku"] == "HOSTILE"]
        if response.status_code in (200, 201):
            assert names == [value], case


NESTED = {
    "arrays past the decoder's limit": "[" * 20_000 + "]" * 20_000,
    "objects just inside it": '{"a":' * 900 + "1" + "}" * 900,
}


@pytest.mark.parametrize("path", ["/v1/orders", "/admin/products/DEEP", "/webhooks/stripe"])
@pytest.mark.parametrize("body", NESTED.values(), ids=NESTED.keys())
def test_deeply_nested_json_is_a_clear_4xx(client: TestClient, path: str, body: str) -> None:
    headers = {"Content-Type": "application/json", **ADMIN}
    if path.startswith("/webhooks/"):  # signed: the body is what gets past the signature
        headers["Stripe-Signature"] = sign(body.encode())
    send = client.put if path.startswith("/admin/") else client.post
    response = send(path, content=body, headers=headers)
    assert 400 <= response.status_code < 500, response.text[:300]
    assert response.json()["error"]
    assert count_rows(Order) == 0
