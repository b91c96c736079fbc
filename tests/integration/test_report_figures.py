"""Every figure of a daily report equals the test's own computation from what it did.

A day of orders in Europe/London is made through the real workflow (see
``reporting.py``): four currencies (JPY has no minor unit), a declined card, a
shortage at inventory and one at reservation, a cancellation with its full refund, two
partial refunds, and orders on both sides of both local midnights. The two days on
which the clocks change are the cases: 2026-03-29 has 23 hours, 2026-10-25 has 25
(its 01:00 comes twice). Each case's moments are written out in UTC by hand.

The expected figures are computed here in plain Python from the scenario's facts,
deciding the local day of each moment with ``astimezone`` (the report compares UTC
instants in SQL), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from shop.config import get_settings
from shop.orders.models import Product
from shop.reports import service
from tests.fixtures.reporting import Fact, ShopDay

LONDON = ZoneInfo("Europe/London")
UTC = dt.UTC


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Case:
    day: dt.date
    hours: int
    moments: dict[str, dt.datetime]


SPRING = Case(dt.date(2026, 3, 29), 23, {  # GMT until 01:00 UTC, then BST
    "week_noon": utc("2026-03-22 12:00"),
    "prev_noon": utc("2026-03-28 12:00"),
    "prev_late": utc("2026-03-28 23:50"),  # 23:50 GMT on the 28th
    "prev_last": utc("2026-03-28 23:59:59.999999"),
    "midnight": utc("2026-03-29 00:00"),  # 00:00 GMT
    "early": utc("2026-03-29 00:30"),  # 00:30 GMT
    "dst_1": utc("2026-03-29 01:00"),  # 02:00 BST: 01:00 never happened
    "dst_2": utc("2026-03-29 01:30"),  # 02:30 BST
    "morning": utc("2026-03-29 08:00"),
    "noon": utc("2026-03-29 11:00"),
    "afternoon": utc("2026-03-29 14:00"),
    "evening": utc("2026-03-29 18:00"),
    "last_second": utc("2026-03-29 22:59:59"),  # 23:59:59 BST
    "next_midnight": utc("2026-03-29 23:00"),  # 00:00 BST on the 30th
    "next_early": utc("2026-03-29 23:30"),
})
AUTUMN = Case(dt.date(2026, 10, 25), 25, {  # BST until 01:00 UTC, then GMT
    "week_noon": utc("2026-10-18 11:00"),
    "prev_noon": utc("2026-10-24 11:00"),
    "prev_late": utc("2026-10-24 22:50"),  # 23:50 BST on the 24th
    "prev_last": utc("2026-10-24 22:59:59.999999"),
    "midnight": utc("2026-10-24 23:00"),  # 00:00 BST on the 25th
    "early": utc("2026-10-24 23:30"),
    "dst_1": utc("2026-10-25 00:30"),  # 01:30 BST, the first 01:30
    "dst_2": utc("2026-10-25 01:30"),  # 01:30 GMT, the second 01:30
    "morning": utc("2026-10-25 09:00"),
    "noon": utc("2026-10-25 12:00"),
    "afternoon": utc("2026-10-25 15:00"),
    "evening": utc("2026-10-25 19:00"),
    "last_second": utc("2026-10-25 23:59:59"),  # 23:59:59 GMT
    "next_midnight": utc("2026-10-26 00:00"),
    "next_early": utc("2026-10-26 00:30"),
})


def make_day(shop: ShopDay, m: dict[str, dt.datetime]) -> None:
    """The scenario, the same for both cases."""
    shop.product("MUG", price=1250, currency="GBP", name="Blue mug")
    shop.product("TEA", price=499, currency="GBP", name="Tea towel")
    shop.product("HAT", price=2000, currency="EUR", name="Sun hat")
    shop.product("BAG", price=4599, currency="USD", name="Tote bag")
    shop.product("FAN", price=3500, currency="JPY", name="Paper fan")
    shop.product("LOW", price=100, currency="GBP", name="Nearly gone", on_hand=3)
    shop.product("LAST", price=2500, currency="GBP", name="Last one", on_hand=1)
    shop.product("RARE", price=999, currency="GBP", name="Rare print", on_hand=2)

    shop.sell({"MUG": 2}, placed=m["prev_late"], captured=m["prev_last"])
    shop.sell({"MUG": 1, "TEA": 3}, placed=m["prev_late"], captured=m["midnight"])
    shop.sell({"HAT": 1}, placed=m["early"])
    shop.sell({"TEA": 2}, placed=m["dst_1"])
    shop.sell({"MUG": 3}, placed=m["dst_2"])
    shop.sell({"FAN": 1}, placed=m["dst_2"])
    shop.sell({"BAG": 2}, placed=m["noon"])
    shop.sell({"FAN": 3}, placed=m["last_second"])
    shop.sell({"HAT": 2}, placed=m["last_second"], captured=m["next_midnight"])
    partly = shop.sell({"MUG": 1}, placed=m["afternoon"])
    shop.refund(partly, 500, at=m["evening"])
    late = shop.sell({"MUG": 1, "TEA": 1}, placed=m["morning"])
    shop.refund(late, 300, at=m["next_midnight"])
    returned = shop.sell({"BAG": 1}, placed=m["prev_noon"])
    shop.cancel(returned, at=m["morning"])
    pending = shop.place({"TEA": 1}, at=m["morning"]).id
    shop.stamp(pending, placed=m["morning"], settled=m["morning"])
    shop.cancel(pending, at=m["morning"] + dt.timedelta(minutes=5))
    shop.decline({"TEA": 1}, at=m["noon"])
    shop.short_at_inventory({"RARE": 5}, at=m["afternoon"])
    shop.race_for_last_unit("LAST", at=m["evening"])
    shop.sell({"TEA": 1}, placed=m["week_noon"])
    shop.sell({"HAT": 1}, placed=m["week_noon"])
    shop.decline({"TEA": 1}, at=m["prev_noon"])
    shop.decline({"MUG": 1}, at=m["next_early"])


# ---- the test's own computation -------------------------------------------------------

def on(moment: dt.datetime | None, day: dt.date) -> bool:
    return moment is not None and moment.astimezone(LONDON).date() == day


def expected_headline(shop: ShopDay, day: dt.date) -> dict[str, Any]:
    facts = list(shop.facts.values())
    sold = [f for f in facts if on(f.captured, day)]
    money: dict[str, dict[str, Any]] = {}
    for currency in {f.currency for f in sold} | {c for c, _, at in shop.refunds if on(at, day)}:
        gross = [f.total for f in sold if f.currency == currency]
        back = [amount for c, amount, at in shop.refunds if c == currency and on(at, day)]
        average = int(Fraction(sum(gross), len(gross)) + Fraction(1, 2)) if gross else None
        money[currency] = {"sales": len(gross), "gross": sum(gross), "refunds": len(back),
                           "refunded": sum(back), "net": sum(gross) - sum(back),
                           "average_order": average}
    return {
        "day": day.isoformat(),
        "orders": {
            "placed": sum(on(f.placed, day) for f in facts),
            "confirmed": len(sold),
            "failed": sum(f.failed is not None and on(f.failed[0], day) for f in facts),
            "cancelled": sum(on(f.cancelled, day) for f in facts),
        },
        "money": money,
        "units": sum(quantity for f in sold for _, _, quantity, _ in f.lines),
    }


def expected_products(shop: ShopDay, day: dt.date) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for fact in shop.facts.values():
        if not on(fact.captured, day):
            continue
        for sku, name, quantity, price in fact.lines:
            row = found.setdefault((sku, fact.currency), {
                "sku": sku, "name": name, "currency": fact.currency, "orders": 0, "units": 0,
                "revenue": 0})
            row["orders"] += 1
            row["units"] += quantity
            row["revenue"] += quantity * price
    return found


def expected_hours(facts: list[Fact], day: dt.date) -> dict[tuple[str, str, str], list[int]]:
    """(local hour, UTC offset, currency) -> [sales, gross]."""
    found: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for fact in facts:
        if fact.captured is not None and on(fact.captured, day):
            local = fact.captured.astimezone(LONDON)
            offset = local.strftime("%z")
            slot = found[(f"{local.hour:02d}:00", f"{offset[:3]}:{offset[3:]}", fact.currency)]
            slot[0] += 1
            slot[1] += fact.total
    return dict(found)


def report_hours(data: dict[str, Any]) -> dict[tuple[str, str, str], list[int]]:
    hours = data["hourly"]["hours"]
    return {(hours[i]["local"], hours[i]["offset"], currency): [slot["sales"], slot["gross"]]
            for currency, slots in data["hourly"]["currencies"].items()
            for i, slot in enumerate(slots) if slot["sales"]}


# ---- the tests ------------------------------------------------------------------------

@pytest.fixture
def london(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_TIMEZONE", "Europe/London")
    get_settings.cache_clear()


@pytest.mark.usefixtures("london")
@pytest.mark.parametrize("case", [SPRING, AUTUMN], ids=["23-hour-day", "25-hour-day"])
def test_every_figure_matches_an_independent_computation(session: Session, case: Case) -> None:
    shop = ShopDay(session)
    make_day(shop, case.moments)
    now = case.moments["next_midnight"] + dt.timedelta(hours=6)

    report, built = service.ensure_built(session, day=case.day, settings=get_settings(), now=now)
    data = report.data

    assert built
    assert (data["day"], data["timezone"], data["length_hours"]) == (
        case.day.isoformat(), "Europe/London", case.hours)
    assert len(data["hourly"]["hours"]) == case.hours
    assert (data["start"], data["end"]) == (case.moments["midnight"].isoformat().replace(
        "+00:00", "Z"), case.moments["next_midnight"].isoformat().replace("+00:00", "Z"))

    headline = expected_headline(shop, case.day)
    assert data["orders"] == headline["orders"]
    assert data["money"] == headline["money"]
    assert data["units"] == headline["units"]
    assert {(f["step"], f["reason"]): f["orders"] for f in data["failures"]} == dict(Counter(
        (f.failed[1], f.failed[2]) for f in shop.facts.values()
        if f.failed is not None and on(f.failed[0], case.day)))

    products = expected_products(shop, case.day)
    assert {(p["sku"], p["currency"]): p for p in data["products"]} == products
    for currency, ranked in data["top_products"]["by_revenue"].items():
        mine = sorted((p for p in products.values() if p["currency"] == currency),
                      key=lambda p: (-p["revenue"], -p["units"], p["sku"]))[:10]
        assert ranked == mine
    assert data["top_products"]["by_units"] == sorted(
        products.values(), key=lambda p: (-p["units"], p["sku"], p["currency"]))[:10]

    assert report_hours(data) == expected_hours(list(shop.facts.values()), case.day)

    comparison = data["comparison"]
    assert comparison["previous_day"] == expected_headline(
        shop, case.day - dt.timedelta(days=1))
    assert comparison["same_weekday_last_week"] == expected_headline(
        shop, case.day - dt.timedelta(days=7))

    stock = sorted((p.on_hand - p.reserved, p.sku) for p in session.scalars(select(Product))
                    if p.on_hand - p.reserved < 5)
    assert [(p["available"], p["sku"]) for p in data["low_stock"]["products"]] == stock
    assert data["low_stock"]["count"] == len(stock)
    assert {name: check["count"] for name, check in data["consistency"].items()} == dict.fromkeys(
        data["consistency"], 0)


@pytest.mark.usefixtures("london")
def test_the_scenario_covers_what_it_claims(session: Session) -> None:
    """Guards the test above against a scenario that silently proves less."""
    shop = ShopDay(session)
    make_day(shop, SPRING.moments)
    headline = expected_headline(shop, SPRING.day)

    assert set(headline["money"]) == {"EUR", "GBP", "JPY", "USD"}
    assert all(headline["orders"][key] for key in ("placed", "confirmed", "failed", "cancelled"))
    assert headline["money"]["GBP"]["refunds"] == 1  # the partial one; the other is tomorrow's
    assert headline["money"]["USD"]["refunded"] == 4599  # the cancelled order, in full
    assert expected_headline(shop, SPRING.day - dt.timedelta(days=1))["orders"]["confirmed"]
    assert expected_headline(shop, SPRING.day - dt.timedelta(days=7))["orders"]["confirmed"]
