"""The admins' browser pages (``/admin/``) in-process, on SQLite and PostgreSQL: signing
in, what the lists and the order page show, actions confirmed before they act, the
forms' defences against forgery, and a customer's name that is only ever text."""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from shop.config import get_settings
from shop.db import session_scope, utcnow
from shop.messaging.models import OutboxMessage
from shop.orders import attention
from shop.orders.admin.pages import local_midnight
from shop.orders.models import Order
from shop.orders.states import Stage
from shop.orders.workflow.table import TaskName
from shop.payments.models import Payment
from shop.web import csrf
from tests.factories.orders import OrderFactory
from tests.fixtures.admin_pages import (
    AUTH,
    confirm_and_post,
    confirmed_order,
    failed_order,
    token_in,
)
from tests.fixtures.api import ADMIN_TOKEN

SCRIPT_NAME = "<script>alert(1)</script>"
ESCAPED_NAME = "&lt;script&gt;alert(1)&lt;/script&gt;"


# --- rows, built with the factories and the workflow's own functions ---------------------





def fresh(order_id: uuid.UUID) -> Order:
    with session_scope() as session:
        order = session.get(Order, order_id)
        assert order is not None
        _ = order.events
        session.expunge(order)
        return order


def outbox_names() -> list[str]:
    with session_scope() as session:
        return list(session.scalars(select(OutboxMessage.name)))






def section(html: str, key: str) -> str:
    found = re.search(rf'<section id="{key}">(.*?)</section>', html, re.S)
    assert found, key
    return found.group(1)


def count_card(html: str, status: str) -> int:
    found = re.search(rf'data-status="{status}">\s*<span[^>]*>[^<]*</span>\s*<strong>(\d+)<',
                      html)
    assert found, status
    return int(found.group(1))


# --- signing in ------------------------------------------------------------------------

def test_the_pages_ask_the_browser_for_basic_credentials(client: TestClient) -> None:
    for auth in (None, ("alice", "wrong-token-wrong-token")):
        response = client.get("/admin/", auth=auth)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Basic realm="shop admin"'
        assert response.headers["content-type"].startswith("text/html")
    assert client.get("/admin/", auth=AUTH).status_code == 200
    bearer = client.get("/admin/", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert bearer.status_code == 200
    assert "signed in as api" in bearer.text
    # the JSON API keeps offering both schemes
    assert client.get("/admin/orders").headers["www-authenticate"] == \
        'Bearer, Basic realm="shop admin"'


def test_without_a_token_configured_the_pages_are_closed(
        client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    order = failed_order(session)
    monkeypatch.setenv("SHOP_ADMIN_TOKEN", "")
    get_settings.cache_clear()
    for auth in (None, AUTH, ("alice", "")):
        for path in ("/admin/", f"/admin/pages/orders/{order.id}"):
            response = client.get(path, auth=auth)
            assert response.status_code == 503, (path, auth)
            assert "SHOP_ADMIN_TOKEN is not set" in response.text
    posted = client.post(f"/admin/pages/orders/{order.id}/retry", auth=AUTH,
                         data={"csrf": "x"})
    assert posted.status_code == 503
    assert fresh(order.id).status == "failed"


# --- what the pages show ---------------------------------------------------------------------

def test_the_dashboard_shows_todays_counts_and_the_orders_that_need_a_person(
        client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_TIMEZONE", "Pacific/Auckland")
    get_settings.cache_clear()
    midnight = local_midnight()
    failed = failed_order(session, name="Grace Hopper", created_at=midnight + dt.timedelta(
        seconds=1))
    OrderFactory(stage=Stage.FAILED, failure_step="inventory", failure_reason="out_of_stock",
                 failure_message="x", created_at=midnight - dt.timedelta(seconds=1))
    paid = confirmed_order(session, attention.Kind.EMAIL_FAILED, attention.Kind.DISPUTE)
    long_ago = utcnow() - dt.timedelta(minutes=20)
    stuck = OrderFactory(stage=Stage.AUTHORIZED, created_at=long_ago)
    moving = OrderFactory(stage=Stage.AUTHORIZED)

    html = client.get("/admin/", auth=AUTH).text
    # today is the shop's day: the failure a second before its midnight is yesterday's
    assert count_card(html, "failed") == 1
    assert count_card(html, "confirmed") == 1
    assert count_card(html, "pending") == (2 if long_ago >= midnight else 1)
    failed_list = section(html, "failed")
    assert str(failed.id) in failed_list
    assert "Grace Hopper" in failed_list
    for shown in ("payment", "payment_unavailable", "We could not reach the payment provider",
                  fresh_payment_reference(failed.id), f"/admin/pages/orders/{failed.id}/retry",
                  f"/admin/pages/orders/{failed.id}/cancel"):
        assert shown in failed_list, shown
    needing = section(html, "attention")
    assert str(paid.id) in needing
    assert str(failed.id) not in needing
    assert "email failed" in needing
    assert "dispute" in needing
    assert f"/admin/pages/orders/{paid.id}/resend-email" in needing
    assert f"/admin/pages/orders/{paid.id}/retry" not in needing
    stuck_list = section(html, "stuck")
    assert str(stuck.id) in stuck_list
    assert str(moving.id) not in stuck_list


def fresh_payment_reference(order_id: uuid.UUID) -> str:
    with session_scope() as session:
        reference = session.scalar(select(Payment.reference).where(
            Payment.order_id == order_id))
        assert reference
        return reference


def test_a_list_pages_through_older_orders(client: TestClient, session: Session) -> None:
    orders = [failed_order(session, created_at=utcnow() - dt.timedelta(minutes=n))
              for n in range(3)]
    first = client.get("/admin/?section=failed", auth=AUTH).text
    assert all(str(o.id) in first for o in orders)
    assert client.get("/admin/?section=failed&cursor=nonsense", auth=AUTH).status_code == 400


def test_the_order_page_shows_the_failure_payments_and_the_timeline_with_its_actors(
        client: TestClient, session: Session) -> None:
    order = failed_order(session)
    order_id = order.id
    client.post(f"/admin/orders/{order_id}/retry", auth=("bob", ADMIN_TOKEN))
    page = client.get(f"/admin/pages/orders/{order_id}", auth=AUTH)
    assert page.status_code == 200
    for shown in ("payment_unavailable", "PaymentTransientError: 503 Service Unavailable",
                  "provider answered 503", "step.failed", "order.retried_payment",
                  "<td>bob</td>", fresh_payment_reference(order_id)):
        assert shown in page.text, shown
    assert page.headers["cache-control"] == "no-store"
    assert client.get(f"/admin/pages/orders/{uuid.uuid4()}", auth=AUTH).status_code == 404
    assert client.get("/admin/pages/orders/not-an-id", auth=AUTH).status_code == 404


# --- actions, confirmed before they act ----------------------------------------------------

def test_retry_asks_first_then_resumes_the_order_as_the_signed_in_admin(
        client: TestClient, session: Session) -> None:
    order = failed_order(session)
    asked = client.get(f"/admin/pages/orders/{order.id}/retry", auth=AUTH)
    assert asked.status_code == 200
    assert 'method="post"' in asked.text
    assert "Yes, retry" in asked.text
    assert fresh(order.id).status == "failed"  # asking changed nothing
    before = outbox_names()

    done = client.post(f"/admin/pages/orders/{order.id}/retry", auth=AUTH,
                       data={"csrf": token_in(asked)}, follow_redirects=False,
                       headers={"Origin": "http://testserver"})
    assert done.status_code == 303
    assert done.headers["location"] == f"/admin/pages/orders/{order.id}?done=retry"
    retried = fresh(order.id)
    assert (retried.status, retried.stage) == ("pending", "in_stock")
    assert [(e.type, e.actor) for e in retried.events][-1] == ("order.retried_payment", "alice")
    assert retried.payment_attempt == 2  # the last attempt definitely failed
    assert len(outbox_names()) == len(before) + 1
    assert TaskName.CHARGE_PAYMENT.value in outbox_names()
    landed = client.get(done.headers["location"], auth=AUTH)
    assert "Retry queued" in landed.text
    assert '<meta http-equiv="refresh"' in landed.text  # until the order settles


def test_cancel_asks_first_then_cancels(client: TestClient, session: Session) -> None:
    order = failed_order(session)
    done = confirm_and_post(client, order.id, "cancel")
    assert done.status_code == 303
    cancelled = fresh(order.id)
    assert cancelled.status == "cancelled"
    assert [(e.type, e.actor) for e in cancelled.events][-1] == ("order.cancelled", "alice")
    page = client.get(f"/admin/pages/orders/{order.id}", auth=AUTH).text
    assert f"/admin/pages/orders/{order.id}/cancel" not in page  # nothing left to cancel


@pytest.mark.parametrize(("kind", "action", "task"), [
    (attention.Kind.EMAIL_FAILED, "resend-email", TaskName.SEND_CONFIRMATION),
    (attention.Kind.FULFILLMENT_FAILED, "request-fulfillment", TaskName.REQUEST_FULFILLMENT),
])
def test_a_paid_order_whose_email_or_warehouse_request_failed_can_send_it_again(
        client: TestClient, session: Session, kind: attention.Kind, action: str,
        task: TaskName) -> None:
    order = confirmed_order(session, kind)
    page = client.get(f"/admin/pages/orders/{order.id}", auth=AUTH).text
    assert kind.replace("_", " ") in page
    assert f"{kind}: for good" in page
    assert f"/admin/pages/orders/{order.id}/{action}" in page
    assert f"/admin/pages/orders/{order.id}/retry" not in page

    assert confirm_and_post(client, order.id, action).status_code == 303
    assert task.value in outbox_names()
    after = fresh(order.id)
    assert after.status == "confirmed"
    assert after.events[-1].actor == "alice"
    with session_scope() as check:
        assert attention.open_items(check, order_id=order.id) == []


def test_an_action_that_no_longer_applies_is_refused_and_changes_nothing(
        client: TestClient, session: Session) -> None:
    order = failed_order(session)
    asked = client.get(f"/admin/pages/orders/{order.id}/retry", auth=AUTH)
    client.post(f"/admin/orders/{order.id}/retry", headers={
        "Authorization": f"Bearer {ADMIN_TOKEN}"})  # another admin was quicker
    events = len(fresh(order.id).events)
    late = client.post(f"/admin/pages/orders/{order.id}/retry", auth=AUTH,
                       data={"csrf": token_in(asked)}, follow_redirects=False)
    assert late.status_code == 409
    assert "not failed" in late.text
    assert "Nothing was done" in late.text
    assert len(fresh(order.id).events) == events
    assert client.get(f"/admin/pages/orders/{order.id}/retry", auth=AUTH).status_code == 409
    assert client.get(f"/admin/pages/orders/{order.id}/teleport", auth=AUTH).status_code == 404
    # Refunding lines applies only to an order with captured money left.
    assert client.get(f"/admin/pages/orders/{order.id}/refund", auth=AUTH).status_code == 409


# --- forged forms ----------------------------------------------------------------------

FORGERIES: dict[str, Callable[[uuid.UUID], dict[str, str]]] = {
    "no token": lambda _: {},
    "an empty token": lambda _: {"csrf": ""},
    "a made-up token": lambda _: {"csrf": "0" * 64},
    "another secret's token": lambda order_id: {"csrf": csrf.form_token(
        "another-admin-token", purpose=f"retry:{order_id}")},
    "another action's token": lambda order_id: {"csrf": csrf.form_token(
        ADMIN_TOKEN, purpose=f"cancel:{order_id}")},
    "another order's token": lambda _: {"csrf": csrf.form_token(
        ADMIN_TOKEN, purpose=f"retry:{uuid.uuid4()}")},
    "a token two hours old": lambda order_id: {"csrf": csrf.form_token(
        ADMIN_TOKEN, purpose=f"retry:{order_id}",
        at=time.time() - 2 * csrf.WINDOW_SECONDS)},
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_form_without_its_token_is_refused_and_changes_nothing(
        client: TestClient, session: Session, forgery: str) -> None:
    order = failed_order(session)
    before = (len(fresh(order.id).events), outbox_names())
    response = client.post(f"/admin/pages/orders/{order.id}/retry", auth=AUTH,
                           data=FORGERIES[forgery](order.id), follow_redirects=False)
    assert response.status_code == 403, response.text
    assert "Nothing was done" in response.text
    assert fresh(order.id).status == "failed"
    assert (len(fresh(order.id).events), outbox_names()) == before


@pytest.mark.parametrize("source", [
    {"Origin": "https://evil.example"},
    {"Origin": "http://testserver.evil.example"},
    {"Origin": "null"},
    {"Referer": "https://evil.example/page.html"},
])
def test_a_form_sent_from_another_sites_page_is_refused_even_with_its_token(
        client: TestClient, session: Session, source: dict[str, str]) -> None:
    order = failed_order(session)
    response = confirm_and_post(client, order.id, "cancel", **source)
    assert response.status_code == 403, response.text
    assert fresh(order.id).status == "failed"
    same_site = confirm_and_post(client, order.id, "cancel",
                                 Referer=f"http://testserver/admin/pages/orders/{order.id}")
    assert same_site.status_code == 303
    assert fresh(order.id).status == "cancelled"


def test_the_json_api_refuses_a_change_from_another_sites_page_made_with_basic_credentials(
        client: TestClient, session: Session) -> None:
    """A browser that signed in to the pages sends its Basic credentials to the API too:
    a form on another site posting to ``/admin/orders/{id}/cancel`` must not cancel."""
    order = failed_order(session)
    forged = client.post(f"/admin/orders/{order.id}/cancel", auth=AUTH,
                         headers={"Origin": "https://evil.example"})
    assert forged.status_code == 403
    assert forged.json()["error"] == "forbidden"
    assert fresh(order.id).status == "failed"
    listed = client.get("/admin/orders", auth=AUTH, headers={"Origin": "https://evil.example"})
    assert listed.status_code == 200  # reading changes nothing (and the browser hides it)
    scripted = client.post(f"/admin/orders/{order.id}/retry", headers={
        "Authorization": f"Bearer {ADMIN_TOKEN}", "Origin": "https://evil.example"})
    assert scripted.status_code == 202  # a bearer token is never sent by a browser itself
    assert client.post(f"/admin/orders/{order.id}/cancel", auth=AUTH).status_code == 202


# --- a customer's name is text -------------------------------------------------------------

def test_a_customer_name_with_markup_is_shown_as_text_everywhere(
        client: TestClient, session: Session) -> None:
    order = failed_order(session, name=SCRIPT_NAME, email="eve@example.com")
    for path in ("/admin/", f"/admin/pages/orders/{order.id}",
                 f"/admin/pages/orders/{order.id}/retry"):
        page = client.get(path, auth=AUTH)
        assert page.status_code == 200
        assert ESCAPED_NAME in page.text, path
        assert "<script" not in page.text, path
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "frame-ancestors 'none'" in policy
