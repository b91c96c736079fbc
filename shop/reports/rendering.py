"""The stored report as people read it: the email's context, its CSV, the browser page.

Everything is derived from the stored JSON alone, so every copy of a day's email (a
resend, or a second send after a crash) shows the same figures. Templates go through
the shared autoescaping environment (``shop.notifications.rendering``): a product or
customer name full of HTML arrives as text. Money is formatted from integer minor
units, per currency, never summed across currencies.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

from shop.notifications.mailer import Attachment
from shop.notifications.rendering import currency_exponent, environment, money
from shop.reports.checks import CHECKS

TEMPLATE = "reports/daily_report"
BAR_HEIGHT = 80  # pixels of the best hour's bar
_MINUS = "\u2212"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def context(data: dict[str, Any]) -> dict[str, Any]:
    """What the templates show, with every figure formatted."""
    day = dt.date.fromisoformat(data["day"])
    comparison = data["comparison"]
    previous, week = comparison["previous_day"], comparison["same_weekday_last_week"]
    return {
        "day": data["day"],
        "day_label": f"{day:%A} {day.day} {day:%B %Y}",
        "timezone": data["timezone"],
        "length_note": _length_note(data["length_hours"]),
        "built_at": data["built_at"],
        "previous_day": previous["day"],
        "week_day": week["day"],
        "orders": _order_rows(data, previous, week),
        "units": _row("Units sold", data["units"], previous["units"], week["units"]),
        "money": _money_rows(data["money"], previous["money"], week["money"]),
        "failures": data["failures"],
        "top_by_revenue": {currency: [_product(p) for p in ranked]
                           for currency, ranked in data["top_products"]["by_revenue"].items()},
        "top_by_units": [_product(p) for p in data["top_products"]["by_units"]],
        "charts": _charts(data["hourly"]),
        "bar_height": BAR_HEIGHT,
        "low_stock": data["low_stock"],
        "fulfillment": _fulfillment(data.get("fulfillment")),
        "checks": _checks(data["consistency"]),
        "healthy": not any(c["count"] for c in data["consistency"].values()),
    }


def _fulfillment(figures: dict[str, Any] | None) -> dict[str, Any] | None:
    """The fulfillment figures with money formatted (None in reports built before them)."""
    if figures is None:
        return None
    return {**figures, "refunds_by_reason": [
        {**r, "amount_text": money(r["amount"], r["currency"])}
        for r in figures["refunds_by_reason"]],
        "unshipped": {**figures["unshipped"], "orders": [
            {**o, "total_text": money(o["total"], o["currency"])}
            for o in figures["unshipped"]["orders"]]}}


def _length_note(length: float) -> str:
    if length < 24:
        return f"{length:g}-hour day: the clocks went forward"
    if length > 24:
        return f"{length:g}-hour day: the clocks went back"
    return ""


def plural(count: int, word: str) -> str:
    """``1 order``, ``2 orders``."""
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


def signed(value: int, text: str | None = None) -> str:
    """``+3``, ``\u22123`` or ``0``: a true minus sign, as in print."""
    shown = text if text is not None else f"{abs(value):,}"
    return f"+{shown}" if value > 0 else f"{_MINUS}{shown}" if value < 0 else "0"


def change(current: int, before: int, currency: str | None = None) -> str:
    """``+2 (+20.0%)``: the difference, and the percentage when ``before`` is not zero."""
    delta = current - before
    shown = money(abs(delta), currency) if currency is not None else f"{abs(delta):,}"
    text = signed(delta, shown if delta else None)
    if delta and before:
        percent = abs(delta) * 100 / abs(before)
        shown_percent = f"{percent:.1f}" if percent >= 0.05 else "<0.1"
        text += f" ({'+' if delta > 0 else _MINUS}{shown_percent}%)"
    return text


def _row(label: str, current: int, previous: int, week: int) -> dict[str, Any]:
    return {"label": label, "value": f"{current:,}", "previous": change(current, previous),
            "week": change(current, week)}


def _order_rows(data: dict[str, Any], previous: dict[str, Any],
                week: dict[str, Any]) -> list[dict[str, Any]]:
    labels = {"placed": "Orders placed", "confirmed": "Confirmed", "failed": "Failed",
              "cancelled": "Cancelled"}
    return [_row(label, data["orders"][key], previous["orders"][key], week["orders"][key])
            for key, label in labels.items()]


def _money_rows(current: dict[str, Any], previous: dict[str, Any],
                week: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per currency seen on any of the three days."""
    rows = []
    empty = {"sales": 0, "gross": 0, "refunds": 0, "refunded": 0, "net": 0,
             "average_order": None}
    for currency in sorted(current.keys() | previous.keys() | week.keys()):
        now, before, last_week = (figures.get(currency, empty)
                                  for figures in (current, previous, week))
        average = now["average_order"]
        rows.append({
            "currency": currency, "sales": plural(now["sales"], "order"),
            "gross": money(now["gross"], currency),
            "refunds": plural(now["refunds"], "refund"),
            "refunded": money(now["refunded"], currency),
            "net": money(now["net"], currency),
            "average": money(average, currency) if average is not None else "\u2013",
            "net_previous": change(now["net"], before["net"], currency),
            "net_week": change(now["net"], last_week["net"], currency),
        })
    return rows


def _product(p: dict[str, Any]) -> dict[str, Any]:
    return {**p, "units_text": plural(p["units"], "unit"),
            "revenue_text": money(p["revenue"], p["currency"])}


def _charts(hourly: dict[str, Any]) -> list[dict[str, Any]]:
    """Bars for each currency's sales by local hour, scaled to the day's best hour."""
    charts = []
    for currency, slots in hourly["currencies"].items():
        best = max(slot["gross"] for slot in slots) or 1
        rows = [{
            "label": hour["label"], "short": hour["local"][:2],
            "zone": hour["label"][6:], "sales": slot["sales"], "gross_minor": slot["gross"],
            "gross": money(slot["gross"], currency) if slot["sales"] else "",
            "height": max(2, round(BAR_HEIGHT * slot["gross"] / best)) if slot["gross"] else 0,
            "text_bar": "#" * round(20 * slot["gross"] / best) if slot["gross"] > 0 else ""}
            for hour, slot in zip(hourly["hours"], slots, strict=True)]
        for row in rows:
            amount = f"{row['gross']} ({row['sales']})" if row["sales"] else ""
            row["text_line"] = f"{row['label']:<9} {row['text_bar']:<20} {amount}".rstrip()
        peak = max(rows, key=lambda row: row["gross_minor"])
        charts.append({"currency": currency, "rows": rows, "peak": peak})
    return charts


def _checks(consistency: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": name, "title": CHECKS.get(name, name), "count": found["count"],
             "orders": [{**order, "total_text": money(order["total"], order["currency"])}
                        for order in found["orders"]]}
            for name, found in consistency.items()]


def page(data: dict[str, Any]) -> str:
    """The report as an HTML page (the email's HTML part)."""
    return environment.get_template(f"{TEMPLATE}.html").render(context(data))


def text(data: dict[str, Any]) -> str:
    """The report as plain text (the email's text part)."""
    return environment.get_template(f"{TEMPLATE}.txt").render(context(data))


def _decimal(amount: int, currency: str) -> str:
    exponent = currency_exponent(currency)
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), 10**exponent)
    return f"{sign}{major}.{minor:0{exponent}d}" if exponent else f"{sign}{major}"


def _cell(value: str) -> str:
    """Text a spreadsheet will not run as a formula (CSV injection)."""
    return f"'{value}" if value.startswith(_FORMULA_START) else value


def csv_attachment(data: dict[str, Any]) -> Attachment:
    """Every product sold that day, per currency, as CSV for spreadsheets (UTF-8, BOM)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["sku", "name", "currency", "orders", "units", "revenue",
                     "revenue_minor_units"])
    for p in data["products"]:
        writer.writerow([_cell(p["sku"]), _cell(p["name"]), p["currency"], p["orders"],
                         p["units"], _decimal(p["revenue"], p["currency"]), p["revenue"]])
    return Attachment(filename=f"sales-{data['day']}.csv", content=out.getvalue().encode(
        "utf-8-sig"), mime_type="text/csv")
