"""Admin line refunds against a real database (SQLite and PostgreSQL) and the dummy
provider: money and stock move exactly once, whatever the repeats and races."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from shop.db import session_scope
from shop.orders import attention
from shop.orders.models import Order
from shop.orders.provider import converge, reconcile
from shop.orders.refunds import service
from shop.orders.refunds.models import RefundRequest
from shop.payments.faults import FaultyGateway, write_rules
from shop.payments.models import Payment
from tests.fixtures.api import order_body
from tests.fixtures.refunds import (
    AUTH,
    LINES,
    TWO_LINES,
    confirmed,
    faulty_dummy,
    money,
    on_hand,
    provider_refunds,
    run_refund_tasks,
)


@pytest.fixture
def gateway(tmp_path: Path) -> FaultyGateway:
    return faulty_dummy(tmp_path)


@pytest.mark.parametrize("with_key", [True, False], ids=["idempotency-key", "double-click"])
def test_a_line_refund_posted_twice_concurrently_moves_money_and_stock_once(
        live_api: str, client: TestClient, gateway: FaultyGateway, with_key: bool) -> None:
    order_id = confirmed(client, gateway)
    mugs, tees = on_hand("MUG-BLUE"), on_hand("TEE-M")
    headers = {**AUTH, "Idempotency-Key": "refund-1"} if with_key else AUTH
    barrier = threading.Barrier(2)
    answers: list[httpx.Response] = []

    def post() -> None:
        barrier.wait()
        answers.append(httpx.post(f"{live_api}/admin/orders/{order_id}/refunds",
                                  headers=headers, json=TWO_LINES, timeout=30))

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
    first, second = (a.json() for a in answers)
    assert first["id"] == second["id"]
    assert first["amount"] == 1500 + 2500
    assert run_refund_tasks(gateway).count("refunded") == 1

    assert provider_refunds(gateway) == (1, 4000)
    captured, refunded, status, refunds = money(order_id)
    assert (captured, refunded, status) == (5500, 4000, "partially_refunded")
    assert refunds == [(4000, "line_refund:admin")]
    assert on_hand("MUG-BLUE") == mugs + 1  # restocked, once
    assert on_hand("TEE-M") == tees  # not restocked
    lines = {x["sku"]: (x["restock"], x["restocked"])
             for x in client.get(f"/admin/orders/{order_id}", headers=AUTH).json()
             ["refunds"][0]["lines"]}
    assert lines == {"MUG-BLUE": (True, True), "TEE-M": (False, False)}
    seen = client.get(f"/admin/orders/{order_id}", headers=AUTH).json()
    assert seen["payment"]["amount_refunded"] == 4000
    types = [e["type"] for e in seen["events"]]
    assert types.count("refund.requested") == 1
    assert types.count("refund.succeeded") == 1

    # What remains: 1 mug (1500) of 5500 - 4000; the T-shirt is all refunded.
    past = client.post(f"/admin/orders/{order_id}/refunds", headers=AUTH, json={
        "lines": [{"sku": "MUG-BLUE", "quantity": 2, "restock": True}], "reason": "again"})
    assert past.status_code == 422
    assert past.json()["fields"][0]["field"] == "lines[0].quantity"
    tee = client.post(f"/admin/orders/{order_id}/refunds", headers=AUTH, json={
        "lines": [{"sku": "TEE-M", "quantity": 1}], "reason": "again"})
    assert tee.status_code == 422
    assert tee.json()["fields"][0]["field"] == "lines[0].quantity"
    rest = client.post(f"/admin/orders/{order_id}/refunds", headers=AUTH, json={
        "lines": [{"sku": "MUG-BLUE", "quantity": 1, "restock": False}], "reason": "the rest"})
    assert rest.status_code == 202
    run_refund_tasks(gateway)
    assert money(order_id)[1:3] == (5500, "refunded")
    assert on_hand("MUG-BLUE") == mugs + 1
    assert provider_refunds(gateway) == (2, 5500)


def test_a_lost_refund_answer_is_sent_again_with_the_same_key_and_refunds_once(
        client: TestClient, gateway: FaultyGateway) -> None:
    order_id = confirmed(client, gateway)
    mugs = on_hand("MUG-BLUE")
    answer = client.post(f"/admin/orders/{order_id}/refunds", headers=AUTH, json=TWO_LINES)
    assert answer.status_code == 202
    refund_id = uuid.UUID(answer.json()["id"])
    write_rules(gateway.path, [{"op": "refund", "mode": "lost_answer", "times": 1},
                               {"op": "retrieve", "mode": "unavailable", "times": 1}])
    with session_scope() as session, pytest.raises(Exception, match="lost"):
        converge.refund_lines(session, refund_id=refund_id, gateway=gateway, owner="w")
    with session_scope() as session:
        request = session.get(RefundRequest, refund_id)
        assert request is not None
        assert request.status == "sent"
        # The refund happened at the provider; the ledger keeps it apart while in flight.
        assert provider_refunds(gateway)[1] == 4000
    with session_scope() as session, pytest.raises(Exception, match="unavailable"):
        converge.refund_lines(session, refund_id=refund_id, gateway=gateway, owner="w")
    with session_scope() as session:  # the provider's webhook comes first: the refund in
        # flight is not taken for a dashboard refund
        converge.converge(session, order_id=order_id, gateway=gateway, owner="hook",
                          cause=converge.Cause.EVENT)
    assert money(order_id)[1:] == (4000, "partially_refunded", [])
    with session_scope() as session:
        assert converge.refund_lines(session, refund_id=refund_id, gateway=gateway,
                                     owner="w") == "refunded"
        assert converge.refund_lines(session, refund_id=refund_id, gateway=gateway,
                                     owner="w") == "already_refunded"
    assert provider_refunds(gateway)[1] == 4000
    assert money(order_id)[1:] == (4000, "partially_refunded", [(4000, "line_refund:admin")])
    assert on_hand("MUG-BLUE") == mugs + 1


def test_a_refund_the_provider_refuses_lands_on_the_attention_list_and_the_same_key_resends(
        client: TestClient, gateway: FaultyGateway) -> None:
    order_id = confirmed(client, gateway)
    headers = {**AUTH, "Idempotency-Key": "k-1"}
    refund_id = uuid.UUID(client.post(f"/admin/orders/{order_id}/refunds", headers=headers,
                                      json=TWO_LINES).json()["id"])
    write_rules(gateway.path, [{"op": "refund", "mode": "unavailable", "times": None}])
    with session_scope() as session:
        service.give_up(session, refund_id=refund_id, error="the provider kept failing")
        kinds = {a.kind for a in attention.open_items(session, order_id=order_id)}
        assert "refund_failed" in kinds
    listed = client.get("/admin/orders?attention=true", headers=AUTH).json()["orders"]
    assert [o["id"] for o in listed] == [str(order_id)]
    again = client.post(f"/admin/orders/{order_id}/refunds", headers=headers, json=TWO_LINES)
    assert (again.status_code, again.json()["id"]) == (202, str(refund_id))
    write_rules(gateway.path, [])
    assert "refunded" in run_refund_tasks(gateway)
    assert provider_refunds(gateway) == (1, 4000)
    with session_scope() as session:
        assert not attention.open_items(session, order_id=order_id)


@pytest.mark.parametrize(("body", "field"), [
    ({"lines": [{"sku": "MUG-BLUE", "quantity": 0}], "reason": "r"}, "lines[0].quantity"),
    ({"lines": [{"sku": "MUG-BLUE", "quantity": -1}], "reason": "r"}, "lines[0].quantity"),
    ({"lines": [{"sku": "MUG-BLUE", "quantity": 2**31}], "reason": "r"}, "lines[0].quantity"),
    ({"lines": [{"sku": "MUG-BLUE", "quantity": 2**63}], "reason": "r"}, "lines[0].quantity"),
    ({"lines": [{"sku": "MUG-BLUE", "quantity": "1"}], "reason": "r"}, "lines[0].quantity"),
    ({"lines": [{"sku": "NOPE", "quantity": 1}], "reason": "r"}, "lines[0].sku"),
    ({"lines": [{"sku": "CAP-BLK", "quantity": 1}], "reason": "r"}, "lines[0].sku"),
    ({"lines": [], "reason": "r"}, "lines"),
    ({"lines": [{"sku": "MUG-BLUE", "quantity": 1}], "reason": "x" * 501}, "reason"),
    ({"lines": [{"sku": "MUG-BLUE", "quantity": 1}], "reason": ""}, "reason"),
    ({"lines": [{"sku": "MUG-BLUE", "quantity": 1}], "reason": "a\x00b"}, "reason"),
    ({"lines": [{"sku": "MUG-BLUE", "quantity": 1, "restock": "yes"}], "reason": "r"},
     "lines[0].restock"),
    ({"lines": [{"sku": "MUG-BLUE", "quantity": 1}, {"sku": "MUG-BLUE", "quantity": 1}],
      "reason": "r"}, "lines[1].sku"),
    ({"lines": [{"sku": "MUG-BLUE", "quantity": 3}], "reason": "r"}, "lines[0].quantity"),
    ({"lines": [{"sku": "MUG-BLUE", "quantity": 1}]}, "reason"),
])
def test_bad_refunds_are_422_naming_the_field_and_write_nothing(
        client: TestClient, gateway: FaultyGateway, body: dict[str, Any], field: str) -> None:
    order_id = confirmed(client, gateway)
    answer = client.post(f"/admin/orders/{order_id}/refunds", headers=AUTH, json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["fields"][0]["field"] == field
    with session_scope() as session:
        assert session.scalars(select(RefundRequest)).all() == []
        payment = session.scalar(select(Payment).where(Payment.order_id == order_id))
        assert payment is not None
        assert payment.amount_refund_pending == 0
        order = session.get(Order, order_id)
        assert order is not None
        assert all(line.quantity_refunded == 0 for line in order.lines)


def test_unknown_orders_are_404_and_orders_without_captured_money_409(
        client: TestClient, gateway: FaultyGateway) -> None:
    unknown = client.post(f"/admin/orders/{uuid.uuid4()}/refunds", headers=AUTH, json=TWO_LINES)
    assert unknown.status_code == 404
    order_id = uuid.UUID(client.post("/v1/orders", json=order_body(lines=LINES)).json()["id"])
    pending = client.post(f"/admin/orders/{order_id}/refunds", headers=AUTH, json=TWO_LINES)
    assert pending.status_code == 409
    assert client.post(f"/admin/orders/{order_id}/refunds", json=TWO_LINES).status_code == 401


def test_a_key_used_for_another_refund_is_422(client: TestClient,
                                                gateway: FaultyGateway) -> None:
    order_id = confirmed(client, gateway)
    headers = {**AUTH, "Idempotency-Key": "same"}
    assert client.post(f"/admin/orders/{order_id}/refunds", headers=headers,
                       json=TWO_LINES).status_code == 202
    other = {**TWO_LINES, "reason": "something else"}
    answer = client.post(f"/admin/orders/{order_id}/refunds", headers=headers, json=other)
    assert answer.status_code == 422
    assert answer.json()["fields"][0]["field"] == "Idempotency-Key"


def test_a_refund_whose_answers_stay_lost_is_flagged_and_reconciliation_finishes_it_once(
        client: TestClient, gateway: FaultyGateway) -> None:
    order_id = confirmed(client, gateway)
    mugs = on_hand("MUG-BLUE")
    refund_id = uuid.UUID(client.post(f"/admin/orders/{order_id}/refunds", headers=AUTH,
                                      json=TWO_LINES).json()["id"])
    write_rules(gateway.path, [{"op": "refund", "mode": "lost_answer", "times": None}])
    for _ in range(3):  # the task's attempts: each one's answer is lost
        with session_scope() as session, pytest.raises(Exception, match="lost"):
            converge.refund_lines(session, refund_id=refund_id, gateway=gateway, owner="w")
    with session_scope() as session:
        service.give_up(session, refund_id=refund_id, error="the answers were lost")
    with session_scope() as session:
        request = session.get(RefundRequest, refund_id)
        assert request is not None
        assert request.status == "sent"  # unknown: not failed, not refunded twice
        assert {a.kind for a in attention.open_items(session, order_id=order_id)} == {
            "refund_failed"}
        session.execute(update(RefundRequest).values(  # five minutes later, with no answer
            updated_at=request.updated_at - dt.timedelta(minutes=10)))
        session.commit()
    write_rules(gateway.path, [])
    with session_scope() as session:
        tally = reconcile.reconcile(session, gateway=gateway, owner="beat")
    assert tally["refund_settled"] == 1
    assert provider_refunds(gateway) == (1, 4000)  # the same key, replayed
    assert money(order_id)[1:] == (4000, "partially_refunded", [(4000, "line_refund:admin")])
    assert on_hand("MUG-BLUE") == mugs + 1
    with session_scope() as session:
        assert not attention.open_items(session, order_id=order_id)
