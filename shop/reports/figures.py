"""The report's figures as one JSON document, assembled from the aggregate queries.

The document is what is stored, served by the admin API, and rendered into every
email, so its shape is versioned (``VERSION``). Money is integer minor units beside
its currency, and every money figure is per currency. Sorting and picking the top
ten happen on the per-product aggregates, a row per product sold, never per order.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from shop.reports import checks, queries, shipping
from shop.reports.days import Window, hours, local_day

VERSION = 2  # 2: "fulfillment" (shipments, units shipped, refunds by reason, unshipped)
TOP = 10


def iso(moment: dt.datetime) -> str:
    """A UTC instant as ``2026-03-29T00:00:00Z``."""
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def build(session: Session, *, day: dt.date, timezone: str, low_stock_below: int,
          now: dt.datetime, unshipped_after_days: int = 3) -> dict[str, Any]:
    """Every figure of the local ``day``; checks are as of ``now``."""
    window = local_day(day, timezone)
    products = queries.product_sales(session, window)
    return {
        "version": VERSION,
        **headline(session, window, units=sum(p.units for p in products)),
        "timezone": timezone,
        "start": iso(window.start),
        "end": iso(window.end),
        "length_hours": window.hours,
        "built_at": iso(now.replace(microsecond=0)),
        "failures": [{"step": f.step, "reason": f.reason, "orders": f.orders}
                     for f in queries.failures(session, window)],
        "products": [_product(p) for p in products],
        "top_products": top_products(products),
        "hourly": hourly(session, window),
        "comparison": {
            "previous_day": headline(session, _shift(window, days=1)),
            "same_weekday_last_week": headline(session, _shift(window, days=7)),
        },
        "fulfillment": shipping.figures(session, window, now=now,
                                        unshipped_after_days=unshipped_after_days),
        "low_stock": checks.low_stock(session, below=low_stock_below),
        "consistency": checks.consistency(session, now=now),
    }


def _shift(window: Window, *, days: int) -> Window:
    return local_day(window.day - dt.timedelta(days=days), window.timezone)


def headline(session: Session, window: Window, *, units: int | None = None) -> dict[str, Any]:
    """The figures compared from day to day: order counts, money per currency, units
    (counted here unless the caller has them from the day's products)."""
    counts = queries.order_counts(session, window)
    return {
        "day": window.day.isoformat(),
        "orders": {"placed": counts.placed, "confirmed": counts.confirmed,
                   "failed": counts.failed, "cancelled": counts.cancelled},
        "money": money(queries.sales(session, window), queries.refunds(session, window)),
        "units": queries.units(session, window) if units is None else units,
    }


def money(sales: list[queries.Money], refunds: list[queries.Money]) -> dict[str, Any]:
    """Gross, refunds and net per currency; never a sum across currencies."""
    gross = {m.currency: m for m in sales}
    back = {m.currency: m for m in refunds}
    figures: dict[str, Any] = {}
    for currency in sorted(gross.keys() | back.keys()):
        sold = gross.get(currency, queries.Money(currency, 0, 0))
        refunded = back.get(currency, queries.Money(currency, 0, 0))
        figures[currency] = {
            "sales": sold.count, "gross": sold.amount,
            "refunds": refunded.count, "refunded": refunded.amount,
            "net": sold.amount - refunded.amount,
            "average_order": average(sold.amount, sold.count),
        }
    return figures


def average(total: int, count: int) -> int | None:
    """``total / count`` in whole minor units, halves rounded up; None for no orders."""
    if count == 0:
        return None
    return (2 * total + count) // (2 * count)


def _product(p: queries.ProductSales) -> dict[str, Any]:
    return {"sku": p.sku, "name": p.name, "currency": p.currency, "orders": p.orders,
            "units": p.units, "revenue": p.revenue}


def top_products(products: list[queries.ProductSales]) -> dict[str, Any]:
    """The ten best products by revenue (per currency) and by units (across them)."""
    by_revenue: dict[str, list[dict[str, Any]]] = {}
    for p in sorted(products, key=lambda p: (p.currency, -p.revenue, -p.units, p.sku)):
        ranked = by_revenue.setdefault(p.currency, [])
        if len(ranked) < TOP:
            ranked.append(_product(p))
    by_units = sorted(products, key=lambda p: (-p.units, p.sku, p.currency))[:TOP]
    return {"by_revenue": by_revenue, "by_units": [_product(p) for p in by_units]}


def hourly(session: Session, window: Window) -> dict[str, Any]:
    """Sales per local hour and currency, every hour listed (zeros included)."""
    day_hours = hours(window)
    rows = queries.hourly_sales(session, window, day_hours)
    currencies: dict[str, list[dict[str, int]]] = {}
    for row in rows:
        slots = currencies.setdefault(
            row.currency, [{"sales": 0, "gross": 0} for _ in day_hours])
        slots[row.hour] = {"sales": row.count, "gross": row.amount}
    repeated = {h.local for h in day_hours if [x.local for x in day_hours].count(h.local) > 1}
    return {
        "hours": [{"start": iso(h.start), "local": h.local, "offset": h.offset,
                   "label": f"{h.local} {h.zone}" if h.local in repeated else h.local}
                  for h in day_hours],
        "currencies": dict(sorted(currencies.items())),
    }
