"""Admins bringing orders home, end to end: localstripe behind a switchable proxy,
PostgreSQL, RabbitMQ, real workers, beat, and the ``shop`` command."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import amqp.exceptions
import httpx
import pytest
from fastapi.testclient import TestClient
from kombu import Connection
from sqlalchemy import delete, select

from shop.db import session_scope
from shop.messaging.models import OutboxMessage
from shop.orders import flow as workflow
from shop.orders.models import Order
from shop.orders.states import Step
from shop.orders.workflow.table import TaskName
from shop.payments.gateway import StripeGateway
from tests.fixtures.api import ADMIN_TOKEN, free_port, order_body
from tests.fixtures.localstripe import API_KEY, intents_for_order
from tests.fixtures.proxy import Forwarder
from tests.fixtures.smtp import SmtpServer
from tests.fixtures.stack import (
    COMMON,
    Stack,
    build_stack,
    drain_raw,
    wait_terminal,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
STRIPE = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def provider(localstripe_url: str) -> Iterator[Forwarder]:
    """localstripe behind a forwarder the test can switch off (an outage)."""
    target = urlsplit(localstripe_url)
    forwarder = Forwarder(free_port(), (str(target.hostname), int(target.port or 80)))
    forwarder.start()
    yield forwarder
    forwarder.stop()


@pytest.fixture
def proxied(pg_url: str, vhost_url: str, provider: Forwarder, smtp_server: SmtpServer,
            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    stack = build_stack({
        "SHOP_DATABASE_URL": pg_url, "SHOP_BROKER_URL": vhost_url,
        "SHOP_PAYMENT_PROVIDER": "stripe", "SHOP_STRIPE_API_KEY": API_KEY,
        "SHOP_STRIPE_API_BASE": f"http://127.0.0.1:{provider.port}",
        "SHOP_SMTP_URL": smtp_server.url, **COMMON, "SHOP_RETRY_MAX_ATTEMPTS": "2",
    }, tmp_path=tmp_path, monkeypatch=monkeypatch)
    yield stack
    stack.stop_all()


@pytest.fixture
def admin_api(proxied: Stack) -> Iterator[TestClient]:
    from shop.api import create_app

    with TestClient(create_app()) as client:
        yield client


def place(api: TestClient, **overrides: Any) -> str:
    response = api.post("/v1/orders", json=order_body(**overrides),
                        headers={"Idempotency-Key": str(uuid.uuid4())})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def captured(localstripe_url: str, order_id: str) -> list[dict[str, Any]]:
    return [i for i in intents_for_order(localstripe_url, order_id) if i["status"] == "succeeded"]


def test_retry_after_a_provider_outage_confirms_with_one_capture(
        proxied: Stack, admin_api: TestClient, provider: Forwarder,
        localstripe_url: str) -> None:
    proxied.start_worker("w1")
    proxied.start_relay()
    provider.stop()  # the payment provider is down
    order_id = place(admin_api)
    assert wait_terminal(proxied, [order_id]) == {order_id: "failed"}
    failed = admin_api.get(f"/v1/orders/{order_id}").json()["failure"]
    assert (failed["step"], failed["reason"]) == ("payment", "payment_unavailable")
    provider.start()  # it is back
    assert admin_api.post(f"/admin/orders/{order_id}/retry", headers=AUTH).status_code == 202
    assert wait_terminal(proxied, [order_id]) == {order_id: "confirmed"}
    assert len(captured(localstripe_url, order_id)) == 1
    assert len(intents_for_order(localstripe_url, order_id)) == 1
    assert admin_api.post(f"/admin/orders/{order_id}/retry", headers=AUTH).status_code == 409


def test_cancelling_a_confirmed_order_refunds_it_once_and_releases_its_stock(
        proxied: Stack, admin_api: TestClient, localstripe_url: str) -> None:
    proxied.start_worker("w1")
    proxied.start_relay()
    order_id = place(admin_api)
    assert wait_terminal(proxied, [order_id]) == {order_id: "confirmed"}
    assert admin_api.post(f"/admin/orders/{order_id}/cancel", headers=AUTH).status_code == 202
    wait_until(lambda: admin_api.get(f"/v1/orders/{order_id}").json()["payment"]["status"]
               == "refunded", timeout=30, what="the refund", stack=proxied)
    assert admin_api.post(f"/admin/orders/{order_id}/cancel", headers=AUTH).status_code == 409
    [intent] = captured(localstripe_url, order_id)
    charge = httpx.get(f"{localstripe_url}/v1/charges/{intent['latest_charge']['id']}",
                       headers=STRIPE).json()
    assert charge["amount_refunded"] == charge["amount"]
    refunds = httpx.get(f"{localstripe_url}/v1/refunds", headers=STRIPE,
                        params={"payment_intent": intent["id"]}).json()["data"]
    assert len(refunds) == 1
    products = {p["sku"]: p["available"] for p in admin_api.get("/v1/products").json()}
    assert products["MUG-BLUE"] == 40
    assert admin_api.get(f"/v1/orders/{order_id}").json()["status"] == "cancelled"


def test_shop_reconcile_cancels_a_held_authorization_and_refunds_a_stray_capture_once(
        proxied: Stack, admin_api: TestClient, localstripe_url: str) -> None:
    from shop.orders.workflow import steps

    gateway = StripeGateway(api_key=API_KEY, api_base=localstripe_url, emulator=True)
    held, stray = place(admin_api), place(admin_api)
    with session_scope() as session:
        for order_id in (held, stray):
            oid = uuid.UUID(order_id)
            steps.check_inventory(session, order_id=oid)
            steps.charge_payment(session, order_id=oid, gateway=gateway, owner="t")
            steps.reserve_stock(session, order_id=oid)
        steps.capture_payment(session, order_id=uuid.UUID(stray), gateway=gateway, owner="t")
        for order_id in (held, stray):  # both end failed, and their release message is lost
            order = session.get(Order, uuid.UUID(order_id))
            assert order is not None
            session.refresh(order)
            if order.stage == "confirmed":  # a capture the order never knew of
                order.stage, order.status = "reserved", "pending"
            workflow.fail(session, order=order, step=Step.PAYMENT, reason="timeout",
                          error="left over by the test")
        session.commit()
        session.execute(delete(OutboxMessage).where(
            OutboxMessage.name == TaskName.RELEASE_PAYMENT))
        session.commit()
    gateway.close()

    first = shop(proxied, "reconcile")
    assert "released: 2" in first
    [held_intent] = intents_for_order(localstripe_url, held)
    assert held_intent["status"] == "canceled"
    [stray_intent] = intents_for_order(localstripe_url, stray)
    refunds = httpx.get(f"{localstripe_url}/v1/refunds", headers=STRIPE,
                        params={"payment_intent": stray_intent["id"]}).json()["data"]
    assert [r["amount"] for r in refunds] == [3000]
    flags = admin_api.get(f"/admin/orders/{stray}", headers=AUTH).json()["attention"]
    assert [f["kind"] for f in flags] == ["refunded_unconfirmed"]

    second = shop(proxied, "reconcile")
    assert "released" not in second
    refunds_again = httpx.get(f"{localstripe_url}/v1/refunds", headers=STRIPE,
                              params={"payment_intent": stray_intent["id"]}).json()["data"]
    assert len(refunds_again) == 1


def test_an_order_whose_message_was_deleted_is_completed_by_the_sweeper(
        proxied: Stack, admin_api: TestClient, vhost_url: str) -> None:
    proxied.env["SHOP_STUCK_AFTER_SECONDS"] = "3"  # beat sweeps every second
    proxied.start_relay()
    order_id = place(admin_api)
    deleted = wait_until(lambda: drain_raw(vhost_url, "intake") if exists(vhost_url) else [],
                         timeout=30, what="the first message, to delete it", stack=proxied)
    assert len(deleted) == 1
    proxied.start_worker("w1")
    started = time.monotonic()
    proxied.start("beat", "-m", "celery", "-A", "shop", "beat", "-l", "info", "-s",
                  str(Path(proxied.log_dir) / "beat-schedule"))
    assert wait_terminal(proxied, [order_id], timeout=60) == {order_id: "confirmed"}
    assert time.monotonic() - started < 3 + 1 + 20  # stuck after 3 s, a sweep, the workflow
    with session_scope() as session:
        events = [e.type for e in session.scalars(select(Order).where(
            Order.id == uuid.UUID(order_id))).one().events]
    assert "workflow.resumed" in events


def exists(vhost_url: str) -> bool:
    """Whether the ``intake`` queue (a new order's first step) was declared yet (by the
    relay's first publish)."""
    try:
        with Connection(vhost_url) as conn:
            conn.default_channel.queue_declare("intake", passive=True)
    except amqp.exceptions.NotFound:
        return False
    return True


def shop(stack: Stack, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "shop.cli", *args], env=stack.env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
