"""Every kind of attention item has an action that resolves it, in the API, the pages and
the CLI, and closes by itself when its cause is gone; the timeline says which (issue 18,
finding 8). SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from shop.db import session_scope
from shop.orders import attention
from shop.orders import flow as workflow
from shop.orders.admin import service as admin_service
from shop.orders.models import OrderEvent
from shop.orders.provider import converge
from shop.orders.states import Stage, Step
from shop.orders.workflow import giving_up
from shop.orders.workflow.table import TaskName
from shop.payments.models import PaymentStatus
from tests.factories.orders import OrderFactory
from tests.factories.payments import PaymentFactory
from tests.fixtures.admin_pages import AUTH, confirm_and_post, confirmed_order
from tests.fixtures.api import ADMIN_TOKEN

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def open_kinds(order_id: uuid.UUID) -> set[str]:
    with session_scope() as session:
        return {item.kind for item in attention.open_items(session, order_id=order_id)}


def resolutions(order_id: uuid.UUID) -> list[dict[str, object]]:
    with session_scope() as session:
        return [dict(e.detail or {}) | {"actor": e.actor} for e in session.scalars(
            select(OrderEvent).where(OrderEvent.order_id == order_id,
                                     OrderEvent.type == "attention.resolved")
            .order_by(OrderEvent.id))]


@pytest.mark.parametrize("kind", list(attention.Kind))
def test_every_kind_of_item_is_marked_handled_through_the_api_once(
        client: TestClient, session: Session, kind: attention.Kind) -> None:
    order = confirmed_order(session, kind)
    url = f"/admin/orders/{order.id}/attention/{kind.value}/resolve"

    done = client.post(url, headers=BEARER)

    assert done.status_code == 200, done.text
    assert done.json() == {"id": str(order.id), "resolved": [kind.value]}
    assert open_kinds(order.id) == set()
    [entry] = resolutions(order.id)
    assert (entry["kind"], entry["by"]) == (kind.value, entry["actor"])
    again = client.post(url, headers=BEARER)
    assert again.status_code == 409
    assert len(resolutions(order.id)) == 1


def test_an_unknown_kind_is_422_and_a_missing_token_401(client: TestClient,
                                                        session: Session) -> None:
    order = confirmed_order(session, attention.Kind.DISPUTE)
    assert client.post(f"/admin/orders/{order.id}/attention/nonsense/resolve",
                       headers=BEARER).status_code == 422
    assert client.post(f"/admin/orders/{order.id}/attention/dispute/resolve"
                       ).status_code == 401
    assert open_kinds(order.id) == {"dispute"}


def test_the_page_marks_every_open_item_handled_as_the_signed_in_admin(
        client: TestClient, session: Session) -> None:
    order = confirmed_order(session, attention.Kind.UNRECOGNIZED_PAYMENT,
                            attention.Kind.LEDGER_MISMATCH)
    page = client.get(f"/admin/pages/orders/{order.id}", auth=AUTH).text
    assert f"/admin/pages/orders/{order.id}/resolve" in page

    assert confirm_and_post(client, order.id, "resolve").status_code == 303

    assert open_kinds(order.id) == set()
    assert {(e["kind"], e["actor"]) for e in resolutions(order.id)} == {
        ("unrecognized_payment", "alice"), ("ledger_mismatch", "alice")}
    after = client.get(f"/admin/pages/orders/{order.id}", auth=AUTH).text
    assert f"/admin/pages/orders/{order.id}/resolve" not in after


def test_the_cli_marks_one_kind_handled(session: Session, db_url: str) -> None:
    order = confirmed_order(session, attention.Kind.DISPUTE, attention.Kind.PROVIDER_ERROR)
    env = {**os.environ, "SHOP_DATABASE_URL": db_url}
    done = subprocess.run([sys.executable, "-m", "shop.cli", "orders", "resolve",
                           str(order.id), "--kind", "provider_error"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "provider_error" in done.stdout
    assert open_kinds(order.id) == {"dispute"}
    [entry] = resolutions(order.id)
    assert entry["kind"] == "provider_error"


def test_a_release_failed_flag_closes_by_itself_when_the_order_is_retried_on_that_payment(
        session: Session) -> None:
    """The review's case: a ``release_failed`` flag stayed on an order that was later
    retried and confirmed. The retry counts on that authorization again, so the release
    is moot, and the flag closes, saying why."""
    order = OrderFactory(stage=Stage.RESERVED)
    PaymentFactory(order=order, reference=f"pi_dummy_{uuid.uuid4().hex[:12]}",
                   status=PaymentStatus.AUTHORIZED)
    workflow.fail(session, order=order, step=Step.RESERVATION, reason="timeout")
    session.commit()
    giving_up.give_up(session, task=TaskName.RELEASE_PAYMENT, order_id=order.id,
                      error="provider down", owner="w", attempt=1)
    assert open_kinds(order.id) == {"release_failed"}

    admin_service.retry(session, order_id=order.id, actor="alice")

    assert open_kinds(order.id) == set()
    [entry] = resolutions(order.id)
    assert entry["kind"] == "release_failed"
    assert "retried" in str(entry["why"])
    with session_scope() as check:
        reloaded = check.get(type(order), order.id)
        assert reloaded is not None
        assert converge.wants(reloaded, 1)  # a late release now leaves the money alone
