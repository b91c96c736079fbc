"""The admin pages' small parts without I/O: the shop's local day, and which buttons an
order shows."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from shop.config import get_settings
from shop.orders.admin.pages import Action, available, local_midnight
from shop.orders.schemas import AdminOrderOut, AttentionOut


def test_today_starts_at_the_shops_local_midnight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_TIMEZONE", "Pacific/Auckland")  # UTC+13 in November
    get_settings.cache_clear()
    now = dt.datetime(2026, 11, 23, 3, 0, tzinfo=dt.UTC)  # 16:00 on the 23rd in Auckland
    assert local_midnight(now) == dt.datetime(2026, 11, 22, 11, 0, tzinfo=dt.UTC)
    late = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)  # 01:00 on the 24th there
    assert local_midnight(late) == dt.datetime(2026, 11, 23, 11, 0, tzinfo=dt.UTC)


def summary(status: str, *kinds: str) -> AdminOrderOut:
    now = dt.datetime.now(dt.UTC)
    return AdminOrderOut(
        id=uuid.uuid4(), status=status, stage=status, email="a@example.com", name="A",
        currency="USD", total=100, created_at=now, updated_at=now, failure=None,
        attention=[AttentionOut(kind=k, message="m", since=now) for k in kinds], payment=None)


@pytest.mark.parametrize(("order", "buttons"), [
    (summary("failed"), [Action.RETRY, Action.CANCEL]),
    (summary("pending"), [Action.CANCEL]),
    (summary("confirmed"), [Action.CANCEL]),
    # Anything under Needs attention can be marked handled (issue 18, finding 8).
    (summary("confirmed", "email_failed", "dispute"),
     [Action.RESEND_EMAIL, Action.RESOLVE, Action.CANCEL]),
    (summary("confirmed", "fulfillment_failed"),
     [Action.REQUEST_FULFILLMENT, Action.RESOLVE, Action.CANCEL]),
    (summary("cancelled", "email_failed"), [Action.RESOLVE]),
])
def test_an_order_shows_the_buttons_that_apply_to_it(order: AdminOrderOut,
                                                     buttons: list[Action]) -> None:
    assert available(order) == buttons
