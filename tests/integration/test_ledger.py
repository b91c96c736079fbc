"""The money ledger per order: every attempt's authorized, captured, refunded and disputed
amounts, shown in the admin API, the pages and the CLI, and compared by reconciliation
with the provider to the cent (issue 18). SQLite and PostgreSQL, a recording fake gateway."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, replace

from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from shop.orders.provider import reconcile
from shop.orders.workflow import steps
from shop.payments.models import Payment
from shop.reports import checks
from tests.fakes import FakeGateway
from tests.fixtures.admin_pages import AUTH
from tests.fixtures.api import ADMIN_TOKEN
from tests.fixtures.outcomes import open_flags, payment_of, placed, to_reserved

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass(frozen=True)
class Paid:
    order_id: uuid.UUID
    payment_id: int
    reference: str
    amount: int
    currency: str
    updated_at: dt.datetime


def confirmed(session: Session, gateway: FakeGateway) -> Paid:
    order = placed(session)
    to_reserved(session, order.id, gateway)
    steps.capture_payment(session, order_id=order.id, gateway=gateway, owner="a")
    payment = payment_of(session, order.id)
    assert payment.reference is not None
    paid = Paid(order.id, payment.id, payment.reference, payment.amount, payment.currency,
                payment.updated_at)
    session.commit()  # no read left open: the API's sessions write next (SQLite locks)
    return paid


def settled_long_ago(session: Session, paid: Paid) -> None:
    """As reconciliation sees an attempt that stopped changing an hour ago."""
    session.execute(update(Payment).where(Payment.id == paid.payment_id)
                    .values(updated_at=paid.updated_at - dt.timedelta(hours=1)))
    session.commit()


def test_the_ledger_shows_in_the_admin_api_the_page_and_the_cli(
        client: TestClient, session: Session, gateway: FakeGateway, db_url: str) -> None:
    payment = confirmed(session, gateway)
    total = payment.amount

    [line] = client.get(f"/admin/orders/{payment.order_id}", headers=BEARER).json()["ledger"]

    assert line == {"attempt": 1, "reference": payment.reference, "currency": payment.currency,
                    "authorized": total, "captured": total, "refunded": 0, "disputed": 0,
                    "held": 0, "verified_at": None}
    page = client.get(f"/admin/pages/orders/{payment.order_id}", auth=AUTH).text
    assert "Money ledger" in page
    assert "not yet checked" in page
    env = {**os.environ, "SHOP_DATABASE_URL": db_url}
    shown = subprocess.run([sys.executable, "-m", "shop.cli", "orders", "show",
                            str(payment.order_id)],
                           env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "ledger (minor units)" in shown.stdout
    assert f"1  {payment.reference}  {payment.currency}  {total}  0  {total}  0  0" in shown.stdout


def test_reconciliation_compares_the_ledger_with_the_provider_to_the_cent(
        session: Session, gateway: FakeGateway) -> None:
    payment = confirmed(session, gateway)
    settled_long_ago(session, payment)

    tally = reconcile.reconcile(session, gateway=gateway, owner="r")

    assert tally["ledger_verified"] == 1
    assert payment_of(session, payment.order_id).verified_at is not None
    assert open_flags(session, payment.order_id) == set()


def test_a_ledger_the_provider_disagrees_with_goes_to_a_person_with_the_amounts(
        session: Session, gateway: FakeGateway) -> None:
    payment = confirmed(session, gateway)
    # Money moved at the provider that the shop never heard of (no event, no answer).
    state = gateway.intents[payment.reference]
    gateway.intents[payment.reference] = replace(state, amount_refunded=500)
    settled_long_ago(session, payment)
    calls_before = list(gateway.calls)

    tally = reconcile.reconcile(session, gateway=gateway, owner="r")

    assert tally["ledger_mismatch"] == 1
    assert open_flags(session, payment.order_id) == {"ledger_mismatch"}
    assert gateway.calls == calls_before  # nothing was moved to "fix" it
    found = checks.consistency(session, now=dt.datetime.now(dt.UTC))["money_needs_a_person"]
    [listed] = found["orders"]
    assert listed["id"] == str(payment.order_id)
    assert f"captured {payment.amount}, refunded 0" in listed["detail"]
    assert f"captured {payment.amount}, refunded 500" in listed["detail"]
    assert payment_of(session, payment.order_id).amount_refunded == 0

    # Once the ledger catches up (the refund's event arrives), the next pass closes it.
    gateway.intents[payment.reference] = state
    session.execute(update(Payment).where(Payment.id == payment.payment_id)
                    .values(verified_at=None))
    session.commit()
    settled_long_ago(session, payment)
    assert reconcile.reconcile(session, gateway=gateway, owner="r")["ledger_verified"] == 1
    assert open_flags(session, payment.order_id) == set()
