"""The storefront checkout API against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from shop.messaging.models import OutboxMessage
from shop.orders.models import IdempotencyKey, Order, OrderEvent, OrderLine, Product
from tests.fixtures.api import ADMIN_TOKEN, count_rows, order_body

WRITTEN = (Order, OrderLine, OrderEvent, IdempotencyKey, OutboxMessage)


def snapshot() -> dict[str, int]:
    return {model.__tablename__: count_rows(model) for model in WRITTEN}


def test_products_list_prices_and_available_stock(client: TestClient) -> None:
    products = {p["sku"]: p for p in client.get("/v1/products").json()}
    assert products["MUG-BLUE"] == {"sku": "MUG-BLUE", "name": "Blue enamel mug",
                                    "price": 1500, "currency": "USD", "available": 40}


def test_order_is_priced_by_the_server_and_written_with_its_workflow_message(
        client: TestClient) -> None:
    response = client.post("/v1/orders", json=order_body(
        lines=[{"sku": "MUG-BLUE", "quantity": 2}, {"sku": "NOTE-A5", "quantity": 3}]))
    assert response.status_code == 202
    order = response.json()
    assert response.headers["Location"] == f"/v1/orders/{order['id']}"
    assert uuid.UUID(order["id"]).version == 4
    assert order["status"] == "pending"
    assert (order["subtotal"], order["total"], order["currency"]) == (5700, 5700, "USD")
    assert [(x["sku"], x["unit_price"], x["line_total"]) for x in order["lines"]] == [
        ("MUG-BLUE", 1500, 3000), ("NOTE-A5", 900, 2700)]
    assert [e["type"] for e in order["events"]] == ["order.placed"]
    assert order["created_at"].endswith("Z") or order["created_at"].endswith("+00:00")
    assert client.get(f"/v1/orders/{order['id']}").json() == order
    assert count_rows(OutboxMessage) == 1


def test_unknown_order_is_404_with_the_error_shape(client: TestClient) -> None:
    response = client.get(f"/v1/orders/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def _eur_product(client: TestClient) -> None:
    response = client.put("/admin/products/MUG-EUR", headers={
        "Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"name": "Euro mug", "price": 1400, "currency": "EUR", "stock": 5})
    assert response.status_code == 201


BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown SKU", order_body(lines=[{"sku": "NOPE", "quantity": 1}]), "lines[0].sku"),
    ("quantity below 1", order_body(lines=[{"sku": "MUG-BLUE", "quantity": 0}]),
     "lines[0].quantity"),
    ("quantity above 1000", order_body(lines=[{"sku": "MUG-BLUE", "quantity": 1001}]),
     "lines[0].quantity"),
    ("no lines", order_body(lines=[]), "lines"),
    ("more than 100 lines", order_body(lines=[{"sku": f"S{i}", "quantity": 1}
                                              for i in range(101)]), "lines"),
    ("a SKU twice", order_body(lines=[{"sku": "MUG-BLUE", "quantity": 1},
                                      {"sku": "MUG-BLUE", "quantity": 1}]), "lines"),
    ("malformed email", order_body(email="ada.example.com"), "email"),
    ("currencies differ", order_body(lines=[{"sku": "MUG-BLUE", "quantity": 1},
                                            {"sku": "MUG-EUR", "quantity": 1}]),
     "lines[1].sku"),
    ("body over 64 KiB", order_body(name="x" * 70_000), "body"),
    ("a client-sent price", order_body(lines=[{"sku": "MUG-BLUE", "quantity": 1,
                                               "price": 1}]), "lines[0].price"),
    ("quantity as a float", order_body(lines=[{"sku": "MUG-BLUE", "quantity": 1.5}]),
     "lines[0].quantity"),
    ("missing shipping address", {k: v for k, v in order_body().items()
                                  if k != "shipping_address"}, "shipping_address"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_INPUTS,
                         ids=[case for case, _, _ in BAD_INPUTS])
def test_bad_input_is_422_naming_the_field_and_writes_nothing(
        client: TestClient, case: str, body: dict[str, Any], field: str) -> None:
    _eur_product(client)
    before = snapshot()
    response = client.post("/v1/orders", json=body, headers={"Idempotency-Key": "bad-1"})
    assert response.status_code == 422, case
    error = response.json()
    assert error["error"] == "validation_failed"
    assert field in [f["field"] for f in error["fields"]], error
    assert snapshot() == before


def _address(**fields: str) -> dict[str, Any]:
    return order_body(shipping_address={**order_body()["shipping_address"], **fields})


CONTROL_CHARACTERS: list[tuple[str, dict[str, Any], str]] = [
    ("a header in the name", order_body(name="Eve\r\nBcc: x@y"), "name"),
    ("a line feed in the name", order_body(name="Eve\nMallory"), "name"),
    ("an escape in the name", order_body(name="Eve\x1b[2J"), "name"),
    ("a NUL in line1", _address(line1="12 Main St\x00"), "shipping_address.line1"),
    ("an escape in line1", _address(line1="\x1b[31m12 Main St"), "shipping_address.line1"),
    ("a line feed in line2", _address(line2="Flat 3\nFloor 2"), "shipping_address.line2"),
    ("a line separator in city", _address(city="Lon\u2028don"), "shipping_address.city"),
    ("a tab in the postal code", _address(postal_code="SW1Y\t4LB"),
     "shipping_address.postal_code"),
    ("a C1 control in the name", order_body(name="Eve\x85Mallory"), "name"),
    ("DEL in the city", _address(city="London\x7f"), "shipping_address.city"),
]


@pytest.mark.parametrize(("case", "body", "field"), CONTROL_CHARACTERS,
                         ids=[case for case, _, _ in CONTROL_CHARACTERS])
def test_line_breaks_and_control_characters_in_name_or_address_are_422_naming_the_field(
        client: TestClient, case: str, body: dict[str, Any], field: str) -> None:
    before = snapshot()
    response = client.post("/v1/orders", json=body, headers={"Idempotency-Key": "ctl-1"})
    assert response.status_code == 422, (case, response.text)
    assert [f["field"] for f in response.json()["fields"]] == [field]
    assert snapshot() == before


NAMES = ["Zoë O'Brien-Łukasiewicz", "山田 太郎", "José Ñúñez", "Nguyễn Thị Minh Khai",
         "محمد بن سلمان", "Ørjan Ødegård", "Mary-Jane D\u2019Arcy", "Σωκράτης",
         "Nasrin Mo\u200cini", "Ana 👩\u200d👩\u200d👧"]


def test_ordinary_unicode_names_and_addresses_are_stored_as_sent(client: TestClient) -> None:
    for i, name in enumerate(NAMES):
        address = {"line1": "東京都港区芝公園 4-2-8", "line2": "Straße 7, 3º andar",
                   "city": "São Paulo", "postal_code": "01310-100", "country": "BR"}
        response = client.post("/v1/orders", json=order_body(
            name=name, shipping_address=address), headers={"Idempotency-Key": f"u-{i}"})
        assert response.status_code == 202, (name, response.text)
        assert client.get(response.headers["Location"]).json()["name"] == name


@pytest.mark.parametrize("name", ["Mug\r\nBcc: x@y", "Mug\x1b[2J", "Mug\u2029Bowl"])
def test_a_product_name_that_is_not_one_line_is_422_and_changes_nothing(
        client: TestClient, name: str) -> None:
    response = client.put("/admin/products/MUG-BLUE", json={
        "name": name, "price": 1500, "currency": "USD", "stock": 5},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 422, response.text
    assert [f["field"] for f in response.json()["fields"]] == ["name"]
    products = {p["sku"]: p["name"] for p in client.get("/v1/products").json()}
    assert products["MUG-BLUE"] == "Blue enamel mug"


def test_the_schema_states_the_rule_the_api_applies(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    properties = {"name": schemas["OrderIn"]["properties"]["name"],
                  **{f"shipping_address.{key}": schemas["AddressIn"]["properties"][key]
                     for key in ("line1", "city", "postal_code")}}
    line2 = schemas["AddressIn"]["properties"]["line2"]["anyOf"][0]
    for field, schema in [*properties.items(), ("shipping_address.line2", line2)]:
        pattern = re.compile(schema["pattern"])
        assert all(pattern.search(name) for name in NAMES), field
        assert not any(pattern.search(value) for value in (
            "Eve\r\nBcc: x@y", "a\x00", "\x1b[2J", "a\u2028b", "a\tb", "a\x85b")), field


def test_malformed_json_is_422_not_500(client: TestClient) -> None:
    before = snapshot()
    response = client.post("/v1/orders", content=b'{"email": ',
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert snapshot() == before


def test_chunked_body_over_limit_is_refused_before_parsing(client: TestClient) -> None:
    def chunks() -> Any:
        for _ in range(100):
            yield b" " * 1024

    response = client.post("/v1/orders", content=chunks(),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] == "body"


def test_same_key_and_body_returns_the_same_order(client: TestClient) -> None:
    first = client.post("/v1/orders", json=order_body(), headers={"Idempotency-Key": "k-1"})
    again = client.post("/v1/orders", json=order_body(), headers={"Idempotency-Key": "k-1"})
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert count_rows(Order) == 1


def test_same_key_with_another_body_is_422_and_makes_no_order(client: TestClient) -> None:
    client.post("/v1/orders", json=order_body(), headers={"Idempotency-Key": "k-2"})
    before = snapshot()
    response = client.post("/v1/orders", json=order_body(name="Somebody Else"),
                           headers={"Idempotency-Key": "k-2"})
    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] == "Idempotency-Key"
    assert snapshot() == before


def test_idempotency_key_over_255_characters_is_422(client: TestClient) -> None:
    response = client.post("/v1/orders", json=order_body(),
                           headers={"Idempotency-Key": "k" * 256})
    assert response.status_code == 422
    assert count_rows(Order) == 0


def test_twenty_concurrent_posts_with_one_key_create_one_order(live_api: str) -> None:
    def post(_: int) -> httpx.Response:
        return httpx.post(f"{live_api}/v1/orders", json=order_body(),
                          headers={"Idempotency-Key": "double-click"}, timeout=30)

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(post, range(20)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert count_rows(Order) == 1
    assert count_rows(OutboxMessage) == 1


def test_admin_routes_need_the_token(client: TestClient) -> None:
    body = {"name": "Mug", "price": 100, "currency": "USD", "stock": 1}
    assert client.put("/admin/products/X", json=body).status_code == 401
    wrong = client.put("/admin/products/X", json=body, headers={"Authorization": "Bearer no"})
    assert wrong.status_code == 401
    assert count_rows(Product) == 10


def test_admin_creates_and_updates_products(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    body = {"name": "Mug", "price": 100, "currency": "USD", "stock": 3}
    assert client.put("/admin/products/NEW-1", json=body, headers=auth).status_code == 201
    updated = client.put("/admin/products/NEW-1", json={**body, "stock": 7}, headers=auth)
    assert updated.status_code == 200
    assert updated.json()["available"] == 7
    bad = client.put("/admin/products/NEW-1", json={**body, "price": -1}, headers=auth)
    assert bad.status_code == 422
    assert bad.json()["fields"][0]["field"] == "price"


def test_openapi_describes_every_route_and_its_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"/healthz", "/v1/products", "/v1/orders", "/v1/orders/{order_id}",
            "/admin/products/{sku}"} <= set(paths)
    assert {"202", "422"} <= set(paths["/v1/orders"]["post"]["responses"])
    assert "ErrorOut" in spec["components"]["schemas"]


def test_healthz_reports_database_and_broker(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
