"""The stored report as people read it: email parts, CSV, formatting (no database)."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from shop.notifications.rendering import render_email
from shop.reports import rendering


def headline(day: str, **money: dict[str, Any]) -> dict[str, Any]:
    return {"day": day, "orders": {"placed": 2, "confirmed": 1, "failed": 0, "cancelled": 0},
            "money": money, "units": 1}


def figures(currency: str, gross: int, refunded: int = 0) -> dict[str, Any]:
    return {"sales": 1, "gross": gross, "refunds": 1 if refunded else 0, "refunded": refunded,
            "net": gross - refunded, "average_order": gross}


def product(name: str = "Blue mug", sku: str = "MUG", currency: str = "GBP",
            revenue: int = 1250) -> dict[str, Any]:
    return {"sku": sku, "name": name, "currency": currency, "orders": 1, "units": 1,
            "revenue": revenue}


def report(**overrides: Any) -> dict[str, Any]:
    hours = [{"start": f"2026-03-29T{h:02d}:00:00Z", "local": f"{h:02d}:00", "offset": "+00:00",
              "label": f"{h:02d}:00"} for h in range(24)]
    slots = [{"sales": 0, "gross": 0} for _ in hours]
    slots[9] = {"sales": 1, "gross": 1250}
    data: dict[str, Any] = {
        "version": 1, **headline("2026-03-29", GBP=figures("GBP", 1250, 300)),
        "timezone": "Europe/London", "start": "2026-03-29T00:00:00Z",
        "end": "2026-03-29T23:00:00Z", "length_hours": 23, "built_at": "2026-03-30T00:15:00Z",
        "failures": [{"step": "payment", "reason": "card_declined", "orders": 1}],
        "products": [product()],
        "top_products": {"by_revenue": {"GBP": [product()]}, "by_units": [product()]},
        "hourly": {"hours": hours, "currencies": {"GBP": slots}},
        "comparison": {"previous_day": headline("2026-03-28", GBP=figures("GBP", 1000)),
                       "same_weekday_last_week": headline("2026-03-22")},
        "low_stock": {"threshold": 5, "count": 1,
                      "products": [{"sku": "MUG", "name": "Blue mug", "available": 2}]},
        "consistency": {name: {"count": 0, "orders": []} for name in rendering.CHECKS},
    }
    data.update(overrides)
    return data


def test_every_part_renders_from_the_stored_figures() -> None:
    email = render_email(rendering.TEMPLATE, rendering.context(report()))

    assert email.subject == "Daily sales report: Sunday 29 March 2026 (Europe/London)"
    for part in (email.text, email.html):
        assert "12.50 GBP" in part  # gross
        assert "3.00 GBP" in part  # refunded
        assert "9.50 GBP" in part  # net
        assert "card_declined" in part
        assert "23-hour day: the clocks went forward" in part


def test_html_has_no_script_no_svg_and_inline_styles_only() -> None:
    html = rendering.page(report())

    lowered = html.lower()
    assert "<script" not in lowered
    assert "<svg" not in lowered
    assert "<style" not in lowered
    assert "<link" not in lowered
    assert "<img" not in lowered  # the chart is table cells, not an image


def test_names_full_of_html_are_escaped_in_html_and_kept_in_text() -> None:
    evil = '<script>alert("x")</script> Mug & <b>Co</b>'
    data = report(products=[product(evil)],
                  top_products={"by_revenue": {"GBP": [product(evil)]},
                                "by_units": [product(evil)]})
    email = render_email(rendering.TEMPLATE, rendering.context(data))

    assert "<script>" not in email.html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; Mug &amp; &lt;b&gt;Co&lt;/b&gt;" in (
        email.html)
    assert evil in email.text


def test_changes_are_signed_with_percentages_per_currency() -> None:
    assert rendering.change(12, 10) == "+2 (+20.0%)"
    assert rendering.change(5, 10) == "\u22125 (\u221250.0%)"
    assert rendering.change(3, 0) == "+3"
    assert rendering.change(7, 7) == "0"
    assert rendering.change(1250, 1000, "GBP") == "+2.50 GBP (+25.0%)"
    assert rendering.change(0, 3500, "JPY") == "\u22123,500 JPY (\u2212100.0%)"
    assert rendering.change(3_160_253, 3_161_544, "JPY") == "\u22121,291 JPY (\u2212<0.1%)"


def test_money_rows_cover_every_currency_of_the_three_days() -> None:
    data = report()
    data["comparison"]["same_weekday_last_week"]["money"] = {"JPY": figures("JPY", 3500)}
    rows = rendering.context(data)["money"]

    assert [row["currency"] for row in rows] == ["GBP", "JPY"]
    assert rows[1]["net"] == "0 JPY"
    assert rows[1]["net_week"] == "\u22123,500 JPY (\u2212100.0%)"
    assert rows[0]["net_previous"] == "\u22120.50 GBP (\u22125.0%)"


def test_chart_bars_scale_to_the_best_hour() -> None:
    data = report()
    data["hourly"]["currencies"]["GBP"][10] = {"sales": 1, "gross": 1}
    chart = rendering.context(data)["charts"][0]

    assert chart["rows"][9]["height"] == rendering.BAR_HEIGHT
    assert chart["rows"][10]["height"] == 2  # tiny, but visible
    assert chart["rows"][0]["height"] == 0
    assert chart["peak"]["label"] == "09:00"


def read_csv(data: dict[str, Any]) -> list[list[str]]:
    attachment = rendering.csv_attachment(data)
    assert attachment.filename == "sales-2026-03-29.csv"
    assert attachment.mime_type == "text/csv"
    assert attachment.content.startswith(b"\xef\xbb\xbf")  # BOM: spreadsheets read UTF-8
    return list(csv.reader(io.StringIO(attachment.content.decode("utf-8-sig"))))


def test_csv_holds_every_product_with_exact_amounts() -> None:
    data = report(products=[product(), product("Fan, paper", "FAN", "JPY", 10500),
                            product("Dinar box", "BOX", "BHD", 1234), product(
                                "Ünïcode", "UNI", "EUR", 5)])
    rows = read_csv(data)

    assert rows[0] == ["sku", "name", "currency", "orders", "units", "revenue",
                       "revenue_minor_units"]
    assert rows[1:] == [["MUG", "Blue mug", "GBP", "1", "1", "12.50", "1250"],
                        ["FAN", "Fan, paper", "JPY", "1", "1", "10500", "10500"],
                        ["BOX", "Dinar box", "BHD", "1", "1", "1.234", "1234"],
                        ["UNI", "Ünïcode", "EUR", "1", "1", "0.05", "5"]]


@pytest.mark.parametrize("name", ["=HYPERLINK(\"http://x\")", "+1", "-2+3", "@SUM(A1)"])
def test_csv_cells_never_start_a_spreadsheet_formula(name: str) -> None:
    rows = read_csv(report(products=[product(name)]))

    assert rows[1][1] == f"'{name}"
