"""The API's edges on SQLite and PostgreSQL: bounds, NUL characters, concurrent upserts,
the admin door, and what anonymous callers may read."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select

from shop.config import Settings, get_settings
from shop.db import reset_engine, session_scope
from shop.messaging.models import OutboxMessage
from shop.orders.flow import fail
from shop.orders.models import Order, Product
from shop.orders.states import Step
from tests.fixtures.api import ADMIN_TOKEN, count_rows, free_port, order_body

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def put(client: TestClient, sku: str, **fields: Any) -> httpx.Response:
    body = {"name": "Mug", "price": 1500, "currency": "USD", "stock": 5, **fields}
    return client.put(f"/admin/products/{sku}", json=body, headers=AUTH)


@pytest.mark.parametrize(("field", "value"), [
    ("price", 2**31), ("price", 2**63), ("price", 100_000_000), ("stock", 2**40),
    ("stock", 2**31), ("price", -1), ("stock", -1),
])
def test_money_and_stock_beyond_their_bounds_are_422_naming_the_field(
        client: TestClient, field: str, value: int) -> None:
    response = put(client, "BIG", **{field: value})
    assert response.status_code == 422, response.text
    assert [f["field"] for f in response.json()["fields"]] == [field]
    assert count_rows(Product) == 10


def test_the_largest_allowed_values_are_stored(client: TestClient) -> None:
    response = put(client, "BIG", price=99_999_999, stock=1_000_000_000)
    assert response.status_code == 201, response.text
    assert response.json()["available"] == 1_000_000_000


def test_an_order_whose_total_passes_2_31_is_422_not_500(client: TestClient) -> None:
    put(client, "DESK", name="Desk", price=500_000, stock=5000)
    put(client, "SOFA", name="Sofa", price=2_000_000, stock=5000)
    response = client.post("/v1/orders", json=order_body(lines=[
        {"sku": "DESK", "quantity": 1000}, {"sku": "SOFA", "quantity": 1000}]))
    assert response.status_code == 422, response.text
    assert response.json()["fields"][0] == {
        "field": "lines", "type": "amount_out_of_range",
        "message": "the order total 2500000000 USD is above the largest charge the provider "
                   "accepts (99999999 USD)"}
    assert count_rows(Order) == 0


def test_an_order_below_the_providers_smallest_charge_is_422(client: TestClient) -> None:
    put(client, "FREEBIE", price=0)
    put(client, "PENNY", price=1)
    for sku in ("FREEBIE", "PENNY"):
        response = client.post("/v1/orders", json=order_body(
            lines=[{"sku": sku, "quantity": 1}]))
        assert response.status_code == 422
        assert response.json()["fields"][0]["type"] == "amount_out_of_range"
    assert count_rows(Order) == 0


def test_a_currency_the_provider_does_not_accept_is_422(client: TestClient) -> None:
    response = put(client, "ODD", currency="XYZ")
    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] == "currency"


@pytest.mark.parametrize(("case", "body", "field"), [
    ("NUL in name", order_body(name="Ada\x00Lovelace"), "name"),
    ("NUL in payment method", order_body(payment_method="pm_card\x00visa"), "payment_method"),
    ("NUL in sku", order_body(lines=[{"sku": "MUG\x00BLUE", "quantity": 1}]), "lines[0].sku"),
    ("NUL in address", order_body(shipping_address={
        "line1": "1\x00 St", "city": "L", "postal_code": "1", "country": "GB"}),
     "shipping_address.line1"),
    ("lone surrogate", order_body(name="Ada \ud800"), "name"),
    ("not a payment method", order_body(payment_method="card 4242"), "payment_method"),
])
def test_text_no_column_can_store_is_422(client: TestClient, case: str,
                                          body: dict[str, Any], field: str) -> None:
    # ASCII-escaped JSON, as a client would send a lone surrogate ("\ud800").
    response = client.post("/v1/orders", content=json.dumps(body),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 422, case
    assert field in [f["field"] for f in response.json()["fields"]], response.text
    assert count_rows(Order) == 0


def test_a_nul_in_a_product_name_is_422(client: TestClient) -> None:
    response = put(client, "NEW", name="Mug\x00")
    assert (response.status_code, response.json()["fields"][0]["field"]) == (422, "name")


def test_two_concurrent_first_puts_of_a_sku_both_succeed(live_api: str) -> None:
    barrier = threading.Barrier(8)

    def create(n: int) -> int:
        barrier.wait()
        return httpx.put(f"{live_api}/admin/products/RACE-1", headers=AUTH, timeout=30, json={
            "name": f"Race {n}", "price": 100, "currency": "USD", "stock": n}).status_code

    for _ in range(3):
        with ThreadPoolExecutor(max_workers=8) as pool:
            codes = sorted(pool.map(create, range(8)))
        assert set(codes) <= {200, 201}, codes
        assert codes.count(201) <= 1, codes
    with session_scope() as session:
        assert session.scalar(select(Product.on_hand).where(Product.sku == "RACE-1")) in range(8)


def test_stock_cannot_go_below_what_orders_hold(client: TestClient) -> None:
    with session_scope() as session:
        product = session.get(Product, "MUG-BLUE")
        assert product is not None
        product.reserved = 3
        session.commit()
    response = put(client, "MUG-BLUE", stock=2)
    assert (response.status_code, response.json()["fields"][0]["type"]) == (422, "below_reserved")


# --- the admin door ----------------------------------------------------------------------

@pytest.mark.parametrize("token", ["", "   ", "\t"])
def test_an_empty_admin_token_keeps_the_admin_api_closed(
        client: TestClient, monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    monkeypatch.setenv("SHOP_ADMIN_TOKEN", token)
    get_settings.cache_clear()
    body = {"name": "Mug", "price": 100, "currency": "USD", "stock": 1}
    for auth in ({"Authorization": "Bearer "}, {"Authorization": "Basic YWRtaW46"}, {}):
        response = client.put("/admin/products/X", json=body, headers=auth)
        assert response.status_code == 503, (auth, response.text)
    assert count_rows(Product) == 10


def test_a_short_admin_token_is_refused_at_start_up_with_a_clear_message() -> None:
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(admin_token="hunter2")


def test_settings_print_without_passwords() -> None:
    settings = Settings(database_url="postgresql+psycopg://shop:s3cret-db@db/shop",
                        broker_url="amqp://shop:s3cret-mq@rabbit:5672//",
                        admin_token="a" * 20, stripe_api_key="sk_live_s3cret")
    for text in (repr(settings), str(settings)):
        assert "s3cret" not in text
        assert "a" * 20 not in text


def test_healthz_names_what_is_down_without_exception_text(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_BROKER_URL", "amqp://guest:topsecret@127.0.0.1:1//")
    get_settings.cache_clear()
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["down"] == ["broker"]
    assert body["broker"] == "down"
    assert "Error" not in response.text
    assert "topsecret" not in response.text
    assert "127.0.0.1" not in response.text


def test_readyz_ignores_the_broker_and_is_503_with_retry_after_only_without_the_database(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_BROKER_URL", "amqp://guest:guest@127.0.0.1:1//")
    get_settings.cache_clear()
    assert client.get("/readyz").json() == {"status": "ok"}
    monkeypatch.setenv("SHOP_DATABASE_URL",
                       f"postgresql+psycopg://shop:topsecret@127.0.0.1:{free_port()}/shop")
    get_settings.cache_clear()
    reset_engine()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json() == {"status": "unavailable", "down": ["database"]}
    assert "topsecret" not in response.text


# --- what the OpenAPI document promises ----------------------------------------------------

def test_openapi_states_the_bounds_and_the_admin_scheme_honestly(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert schemas["ProductIn"]["properties"]["price"]["maximum"] == 99_999_999
    assert schemas["ProductIn"]["properties"]["stock"]["maximum"] == 1_000_000_000
    assert schemas["LineIn"]["properties"]["quantity"]["maximum"] == 1000
    assert "pattern" in schemas["OrderIn"]["properties"]["payment_method"]
    put_product = spec["paths"]["/admin/products/{sku}"]["put"]
    assert {"200", "201", "401", "422", "503"} <= set(put_product["responses"])
    assert put_product["security"]
    assert spec["components"]["securitySchemes"]["adminToken"] == {
        "type": "http", "scheme": "bearer", "description": "`Authorization: Bearer "
                                                          "$SHOP_ADMIN_TOKEN`"}
    storefront = [spec["paths"]["/v1/orders"]["post"], spec["paths"]["/v1/products"]["get"],
                  spec["paths"]["/v1/orders/{order_id}"]["get"]]
    assert all("401" not in op["responses"] and "security" not in op for op in storefront)
    assert "413" not in str(spec["paths"])  # oversized bodies are the 422 the guard sends
    assert "422" in spec["paths"]["/v1/orders"]["post"]["responses"]


def test_public_failure_messages_are_written_for_customers(client: TestClient) -> None:
    placed = client.post("/v1/orders", json=order_body()).json()
    with session_scope() as session:
        order = session.get(Order, uuid.UUID(placed["id"]))
        assert order is not None

        fail(session, order=order, step=Step.PAYMENT, reason="payment_unavailable",
             error="OperationalError: could not connect to server at db-internal-7:5432")
        session.commit()
    seen = client.get(f"/v1/orders/{placed['id']}").json()
    assert seen["failure"] == {"step": "payment", "reason": "payment_unavailable",
                               "message": "We could not reach the payment provider. "
                                          "No money was taken."}
    assert "db-internal" not in str(seen)
    assert "OperationalError" not in str(seen)
    assert count_rows(OutboxMessage) == 1


def test_a_flood_from_one_client_gets_clear_429s_and_loses_nothing(
        catalogue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from shop.api import create_app

    monkeypatch.setenv("SHOP_CHECKOUT_RATE", "2")
    monkeypatch.setenv("SHOP_CHECKOUT_BURST", "5")
    get_settings.cache_clear()
    with TestClient(create_app()) as flooding:
        keys = [f"flood-{i}" for i in range(20)]
        answers = [flooding.post("/v1/orders", json=order_body(), headers={
            "Idempotency-Key": key}) for key in keys]
    accepted = [r for r in answers if r.status_code == 202]
    refused = [r for r in answers if r.status_code == 429]
    assert len(accepted) + len(refused) == 20
    assert 5 <= len(accepted) <= 7
    assert all(r.json()["error"] == "rate_limited" for r in refused)
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    assert count_rows(Order) == len(accepted)  # a refused checkout wrote nothing
    assert client_is_unaffected(monkeypatch)


def client_is_unaffected(monkeypatch: pytest.MonkeyPatch) -> bool:
    """Another client still gets through (buckets are per client)."""
    from shop.web.limits import CheckoutRateLimit

    limiter = CheckoutRateLimit(app=lambda *_: None, rate=2, burst=5)  # type: ignore[arg-type]
    for _ in range(5):
        assert limiter._take("a") == 0
    assert limiter._take("a") > 0
    return limiter._take("b") == 0


def test_a_database_that_cannot_be_reached_is_503_with_retry_after(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A PostgreSQL restart or failover is the shop being briefly away, not a bug:
    503 and Retry-After, so the storefront retries under the same Idempotency-Key."""
    from shop.api import create_app

    monkeypatch.setenv("SHOP_DATABASE_URL",
                       f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone")
    get_settings.cache_clear()
    reset_engine()
    with TestClient(create_app()) as client:
        for response in (client.post("/v1/orders", json=order_body(),
                                     headers={"Idempotency-Key": "k-503"}),
                         client.get("/v1/products")):
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "5"
            assert response.json()["error"] == "unavailable"
            assert "psycopg" not in response.text
            assert "127.0.0.1" not in response.text
