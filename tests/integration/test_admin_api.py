"""The admin API and ``shop orders`` against a real database (SQLite and PostgreSQL),
with the workflow's steps run in-process against the dummy provider."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy import update as sa_update

from shop.db import session_scope
from shop.messaging.models import OutboxMessage
from shop.orders import lease
from shop.orders.models import Order
from shop.orders.provider import converge
from shop.orders.workflow import steps
from shop.orders.workflow.table import TaskName
from shop.payments.dummy import DummyGateway
from shop.payments.faults import FaultyGateway, write_rules
from shop.payments.models import Payment
from tests.fixtures.api import ADMIN_TOKEN, order_body

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def gateway(tmp_path: Path) -> FaultyGateway:
    return FaultyGateway(DummyGateway(state_dir=tmp_path / "dummy_payments"),
                         tmp_path / "faults.json")


def place(client: TestClient, **overrides: Any) -> uuid.UUID:
    return uuid.UUID(client.post("/v1/orders", json=order_body(**overrides)).json()["id"])


def drive(order_id: uuid.UUID, gateway: FaultyGateway) -> str:
    """Run the order's steps in-process, as far as they go; returns its status."""
    with session_scope() as session:
        for _ in range(6):
            order = session.get(Order, order_id)
            assert order is not None
            session.refresh(order)
            stage = order.stage
            if stage == "placed":
                steps.check_inventory(session, order_id=order_id)
            elif stage == "in_stock":
                steps.charge_payment(session, order_id=order_id, gateway=gateway, owner="w")
            elif stage == "authorized":
                steps.reserve_stock(session, order_id=order_id)
            elif stage == "reserved":
                steps.capture_payment(session, order_id=order_id, gateway=gateway, owner="w")
            else:
                return order.status
        return order.status


def fail_payment(client: TestClient, gateway: FaultyGateway, order_id: uuid.UUID) -> None:
    """The provider is down for every call: the step gives up, the order fails."""
    from shop.orders.workflow import giving_up

    write_rules(gateway.path, [{"op": "*", "mode": "unavailable", "times": None}])
    with session_scope() as session:
        steps.check_inventory(session, order_id=order_id)
        giving_up.give_up(session, task=TaskName.CHARGE_PAYMENT, order_id=order_id,
                          error="provider down", owner="w")
    write_rules(gateway.path, [])


def intents(gateway: FaultyGateway) -> int:
    return len(list(gateway.list_intents(created_after=0)))


def test_admin_routes_answer_401_without_credentials_and_name_the_scheme(
        client: TestClient) -> None:
    response = client.get("/admin/orders")
    assert response.status_code == 401
    assert "Basic" in response.headers["WWW-Authenticate"]
    basic = base64.b64encode(f"ada:{ADMIN_TOKEN}".encode()).decode()
    assert client.get("/admin/orders", headers={"Authorization": f"Basic {basic}"}
                      ).status_code == 200


def test_the_list_is_newest_first_filtered_and_paged_by_cursor(client: TestClient) -> None:
    ids = [place(client) for _ in range(5)]
    first = client.get("/admin/orders", params={"limit": 2}, headers=AUTH).json()
    second = client.get("/admin/orders", params={"limit": 2, "cursor": first["next_cursor"]},
                        headers=AUTH).json()
    third = client.get("/admin/orders", params={"limit": 2, "cursor": second["next_cursor"]},
                       headers=AUTH).json()
    seen = [o["id"] for page in (first, second, third) for o in page["orders"]]
    assert seen == [str(i) for i in reversed(ids)]
    assert third["next_cursor"] is None
    assert client.get("/admin/orders", params={"status": "failed"},
                      headers=AUTH).json()["orders"] == []
    bad = client.get("/admin/orders", params={"cursor": "not-a-cursor"}, headers=AUTH)
    assert (bad.status_code, bad.json()["fields"][0]["field"]) == (422, "cursor")


def test_retry_after_an_outage_confirms_with_one_intent_and_a_second_retry_is_409(
        client: TestClient, gateway: FaultyGateway) -> None:
    order_id = place(client)
    fail_payment(client, gateway, order_id)
    seen = client.get(f"/admin/orders/{order_id}", headers=AUTH).json()
    assert (seen["status"], seen["failure"]["reason"]) == ("failed", "payment_unavailable")
    assert seen["failure"]["detail"] == "provider down"  # admins see what customers don't
    retried = client.post(f"/admin/orders/{order_id}/retry", headers=AUTH)
    assert retried.status_code == 202, retried.text
    assert client.post(f"/admin/orders/{order_id}/retry", headers=AUTH).status_code == 409
    assert drive(order_id, gateway) == "confirmed"
    assert intents(gateway) == 1
    events = client.get(f"/admin/orders/{order_id}", headers={
        "Authorization": "Basic " + base64.b64encode(f"grace:{ADMIN_TOKEN}".encode()).decode()
    }).json()["events"]
    assert [(e["type"], e["actor"]) for e in events if e["actor"]] == [
        ("order.retried_payment", "api")]


def test_retry_after_a_lost_authorization_answer_uses_that_authorization(
        client: TestClient, gateway: FaultyGateway) -> None:
    from shop.orders.workflow import giving_up

    order_id = place(client)
    # The call that authorizes is the confirming create (issue 19: one call, not
    # create then confirm); its answer is lost, then the provider goes away.
    write_rules(gateway.path, [{"op": "create_intent", "mode": "lost_answer", "times": 1},
                               {"op": "*", "mode": "unavailable", "times": None,
                                "after": "create_intent"}])
    with pytest.raises(Exception, match="injected"):
        drive(order_id, gateway)
    with session_scope() as session:
        giving_up.give_up(session, task=TaskName.CHARGE_PAYMENT, order_id=order_id,
                          error="provider down", owner="w")
    write_rules(gateway.path, [])
    assert client.post(f"/admin/orders/{order_id}/retry", headers=AUTH).status_code == 202
    assert drive(order_id, gateway) == "confirmed"
    assert intents(gateway) == 1  # the authorization the lost answer hid was used
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Payment)) == 1


def test_a_retry_after_a_decline_opens_a_new_attempt(client: TestClient,
                                                     gateway: FaultyGateway) -> None:
    order_id = place(client, payment_method="pm_card_chargeDeclined")
    assert drive(order_id, gateway) == "failed"
    with session_scope() as session:
        order = session.get(Order, order_id)
        assert order is not None
        order.payment_method = "pm_card_visa"  # the customer gave another card
        session.commit()
    client.post(f"/admin/orders/{order_id}/retry", headers=AUTH)
    assert drive(order_id, gateway) == "confirmed"
    with session_scope() as session:
        attempts = session.scalars(select(Payment.attempt).where(
            Payment.order_id == order_id).order_by(Payment.attempt)).all()
    assert attempts == [1, 2]


def test_a_release_that_decided_before_an_admin_retry_leaves_the_retried_authorization(
        client: TestClient, gateway: FaultyGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 18, finding 9: the release task decided before it took the order's lease;
    # an admin retry that kept the attempt (authorized, not definitely failed) in that
    # window had its authorization cancelled under it.
    order_id = place(client)
    with session_scope() as session:
        steps.check_inventory(session, order_id=order_id)
        steps.charge_payment(session, order_id=order_id, gateway=gateway, owner="w")
        steps.reserve_stock(session, order_id=order_id)
        steps.fail_step(session, order_id=order_id, step=steps.Step.PAYMENT,
                        reason="payment_unavailable", message="capture step gave up")
        reference = str(session.scalar(select(Payment.reference)))
    hold = lease.hold

    @contextmanager
    def retried_first(session: Any, *, order_id: uuid.UUID, owner: str) -> Iterator[None]:
        # The release task is running; the admin retries just before it takes the lease.
        assert client.post(f"/admin/orders/{order_id}/retry", headers=AUTH).status_code == 202
        monkeypatch.setattr(lease, "hold", hold)
        with hold(session, order_id=order_id, owner=owner):
            yield

    monkeypatch.setattr(lease, "hold", retried_first)
    with session_scope() as session:
        assert converge.release(session, order_id=order_id, attempt=1, gateway=gateway,
                                owner="release") is False
    assert gateway.retrieve(reference).status == "requires_capture"
    assert drive(order_id, gateway) == "confirmed"
    assert intents(gateway) == 1


def test_concurrent_retries_run_the_workflow_once(live_api: str, gateway: FaultyGateway,
                                                  client: TestClient) -> None:
    order_id = place(client)
    fail_payment(client, gateway, order_id)
    barrier = threading.Barrier(6)
    codes: list[int] = []

    def retry() -> None:
        barrier.wait()
        codes.append(httpx.post(f"{live_api}/admin/orders/{order_id}/retry", headers=AUTH,
                                timeout=30).status_code)

    def bulk() -> None:
        barrier.wait()
        codes.append(httpx.post(f"{live_api}/admin/orders/retry", headers=AUTH, timeout=30,
                                json={"step": "payment"}).status_code)

    threads = [threading.Thread(target=f) for f in (retry, retry, retry, bulk, bulk, bulk)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes.count(409) >= 2
    assert 202 in codes
    with session_scope() as session:
        queued = session.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.name == TaskName.CHARGE_PAYMENT))
        events = [e.type for e in session.get(Order, order_id).events]  # type: ignore[union-attr]
    assert queued == 2  # the workflow's first, and the one retry's
    assert events.count("order.retried_payment") == 1


def test_cancel_refunds_a_confirmed_order_releases_its_stock_and_only_once(
        client: TestClient, gateway: FaultyGateway) -> None:
    order_id = place(client)
    assert drive(order_id, gateway) == "confirmed"
    assert client.post(f"/admin/orders/{order_id}/cancel", headers=AUTH).status_code == 202
    assert client.post(f"/admin/orders/{order_id}/cancel", headers=AUTH).status_code == 409
    products = {p["sku"]: p["available"] for p in client.get("/v1/products").json()}
    assert products["MUG-BLUE"] == 40
    with session_scope() as session:
        releases = session.scalars(select(OutboxMessage.payload).where(
            OutboxMessage.name == TaskName.RELEASE_PAYMENT)).all()
        assert releases == [{"order_id": str(order_id), "attempt": 1}]
        converge.release(session, order_id=order_id, attempt=1, gateway=gateway,
                              owner="w")
        converge.release(session, order_id=order_id, attempt=1, gateway=gateway,
                              owner="w")
    seen = client.get(f"/v1/orders/{order_id}").json()
    assert (seen["status"], seen["payment"]["status"]) == ("cancelled", "refunded")
    assert seen["payment"]["amount_refunded"] == seen["total"]
    [intent] = gateway.list_intents(created_after=0)
    assert intent.amount_refunded == seen["total"]


def test_cancelling_a_shipped_request_tells_the_warehouse_once(
        client: TestClient, gateway: FaultyGateway) -> None:
    def warehouse_messages() -> list[tuple[str, dict[str, Any]]]:
        with session_scope() as session:
            return [(m.name, m.payload) for m in session.scalars(
                select(OutboxMessage).where(OutboxMessage.kind == "event")
                .order_by(OutboxMessage.created_at))]

    requested = place(client)
    assert drive(requested, gateway) == "confirmed"
    with session_scope() as session:
        steps.request_fulfillment(session, order_id=requested)
    assert client.post(f"/admin/orders/{requested}/cancel", headers=AUTH).status_code == 202
    assert client.post(f"/admin/orders/{requested}/cancel", headers=AUTH).status_code == 409
    [(_, request), (name, withdrawal)] = warehouse_messages()
    assert name == "order.fulfillment_cancelled"
    assert withdrawal["order_id"] == str(requested)
    assert withdrawal["request_message_id"] == request["message_id"]

    not_yet = place(client, email="second@example.com")
    assert drive(not_yet, gateway) == "confirmed"
    assert client.post(f"/admin/orders/{not_yet}/cancel", headers=AUTH).status_code == 202
    with session_scope() as session:  # the step's message arrives after the cancel
        steps.request_fulfillment(session, order_id=not_yet)
    assert len(warehouse_messages()) == 2  # nothing asked of the warehouse for it


def test_unknown_orders_are_404_and_other_states_409(client: TestClient) -> None:
    assert client.post(f"/admin/orders/{uuid.uuid4()}/retry", headers=AUTH).status_code == 404
    pending = place(client)
    response = client.post(f"/admin/orders/{pending}/retry", headers=AUTH)
    assert (response.status_code, response.json()["error"]) == (409, "conflict")
    assert client.post(f"/admin/orders/{pending}/resend-email",
                       headers=AUTH).status_code == 409


def test_a_confirmed_orders_email_can_be_sent_again(client: TestClient,
                                                    gateway: FaultyGateway) -> None:
    order_id = place(client)
    assert drive(order_id, gateway) == "confirmed"
    response = client.post(f"/admin/orders/{order_id}/resend-email", headers=AUTH)
    assert (response.status_code, response.json()["queued"]) == (202, "resend_email")
    with session_scope() as session:
        names = session.scalars(select(OutboxMessage.name).where(
            OutboxMessage.name == TaskName.SEND_CONFIRMATION)).all()
    assert len(names) == 2  # the workflow's, and the admin's (the ledger sends once)


def test_the_cli_lists_retries_and_escapes_what_customers_typed(
        client: TestClient, gateway: FaultyGateway, monkeypatch: pytest.MonkeyPatch,
        db_url: str) -> None:
    # Checkout refuses control characters in a name now (issue 18, finding 13); rows
    # stored before that rule, or written by other tools, can still hold them, and the
    # CLI must never pass them to the terminal.
    order_id = place(client, name="<script>")
    with session_scope() as session:
        session.execute(sa_update(Order).where(Order.id == order_id)
                        .values(name="<script>\x1b[2J"))
        session.commit()
    fail_payment(client, gateway, order_id)
    env = {**dict(__import__("os").environ), "SHOP_DATABASE_URL": db_url}
    listed = subprocess.run([sys.executable, "-m", "shop.cli", "orders", "list", "--status",
                             "failed"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert str(order_id) in listed.stdout
    assert "payment_unavailable" in listed.stdout
    assert "\x1b" not in listed.stdout
    assert "\\x1b[2J" in listed.stdout
    retried = subprocess.run([sys.executable, "-m", "shop.cli", "orders", "retry",
                              str(order_id)], env=env, capture_output=True, text=True,
                             timeout=60)
    assert (retried.returncode, "queued for retry" in retried.stdout) == (0, True)
    again = subprocess.run([sys.executable, "-m", "shop.cli", "orders", "retry", str(order_id)],
                           env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1
    assert "not failed" in again.stdout
    unknown = subprocess.run([sys.executable, "-m", "shop.cli", "orders", "show",
                              str(uuid.uuid4())], env=env, capture_output=True, text=True,
                             timeout=60)
    assert (unknown.returncode, "no order" in unknown.stdout) == (1, True)
