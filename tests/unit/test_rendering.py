"""The email Environment: escaping, strictness, money and subjects."""

from __future__ import annotations

from typing import Any

import pytest
from jinja2 import UndefinedError

from shop.notifications import rendering
from shop.notifications.rendering import RenderedEmail, environment, money, render_email

TEMPLATE = "notifications/order_confirmation"


def order_context(**overrides: Any) -> dict[str, Any]:
    order: dict[str, Any] = {
        "id": "0b6c4f0e-8d0a-4c36-9a57-4a1b2b8f2a11",
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "currency": "USD",
        "subtotal": 4250,
        "total": 4250,
        "lines": [
            {"sku": "MUG-BLUE", "name": "Blue mug", "quantity": 2, "unit_price": 1500,
             "line_total": 3000},
            {"sku": "TEE-M", "name": "T-shirt (M)", "quantity": 1, "unit_price": 1250,
             "line_total": 1250},
        ],
        "shipping_address": {"line1": "12 St James's Square", "city": "London",
                             "postal_code": "SW1Y 4JH", "country": "GB"},
    }
    order.update(overrides)
    return {"order": order}


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        (1500, "USD", "15.00 USD"),
        (5, "EUR", "0.05 EUR"),
        (0, "GBP", "0.00 GBP"),
        (123456789, "USD", "1,234,567.89 USD"),
        (-1999, "USD", "-19.99 USD"),
        (1500, "JPY", "1,500 JPY"),
        (990, "KRW", "990 KRW"),
        (1500, "KWD", "1.500 KWD"),
        (5, "BHD", "0.005 BHD"),
        (12345, "JOD", "12.345 JOD"),
        (1500, "usd", "15.00 USD"),
        (10**20 + 1, "USD", "1,000,000,000,000,000,000.01 USD"),
    ],
)
def test_money_formats_integer_minor_units_exactly(
    amount: int, currency: str, expected: str
) -> None:
    assert money(amount, currency) == expected


@pytest.mark.parametrize("amount", [15.0, "1500", True])
def test_money_refuses_anything_but_integers(amount: Any) -> None:
    with pytest.raises(TypeError):
        money(amount, "USD")


def test_money_refuses_a_malformed_currency() -> None:
    with pytest.raises(ValueError, match="ISO 4217"):
        money(100, "US")


def test_money_is_a_template_filter() -> None:
    assert environment.from_string("{{ 1500 | money('JPY') }}").render() == "1,500 JPY"


def test_confirmation_names_the_order_every_line_and_the_total() -> None:
    email = render_email(TEMPLATE, order_context())
    assert isinstance(email, RenderedEmail)
    order_id = "0b6c4f0e-8d0a-4c36-9a57-4a1b2b8f2a11"
    assert order_id in email.subject
    for body in (email.text, email.html):
        assert order_id in body
        for sku, name, total in [("MUG-BLUE", "Blue mug", "30.00 USD"),
                                 ("TEE-M", "T-shirt (M)", "12.50 USD")]:
            assert sku in body
            assert name in body
            assert total in body
        assert "42.50 USD" in body
        assert "SW1Y 4JH" in body
    assert "2 x 15.00 USD = 30.00 USD" in email.text


def test_html_escapes_what_the_customer_typed_and_text_keeps_it() -> None:
    context = order_context(name="<script>alert(1)</script>")
    context["order"]["lines"][0]["name"] = "Mugs & <b>more</b>"
    context["order"]["shipping_address"]["line1"] = "<img src=x onerror=alert(1)>"
    context["order"]["shipping_address"]["city"] = "{{ 7*7 }}"
    email = render_email(TEMPLATE, context)
    assert "<script>" not in email.html
    assert "<img" not in email.html
    assert "&lt;img src=x onerror=alert(1)&gt;" in email.html
    assert "{{ 7*7 }}" in email.html  # data, never a template
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in email.html
    assert "Mugs &amp; &lt;b&gt;more&lt;/b&gt;" in email.html
    assert "Hello <script>alert(1)</script>," in email.text


def test_optional_second_address_line_is_shown_when_present() -> None:
    context = order_context()
    assert "Flat 3" not in render_email(TEMPLATE, context).text
    context["order"]["shipping_address"]["line2"] = "Flat 3"
    email = render_email(TEMPLATE, context)
    assert "Flat 3" in email.text
    assert "Flat 3" in email.html


def test_missing_context_is_an_error_not_a_blank() -> None:
    context = order_context()
    del context["order"]["total"]
    with pytest.raises(UndefinedError, match="total"):
        render_email(TEMPLATE, context)
    with pytest.raises(UndefinedError):
        render_email(TEMPLATE, {})


def test_subject_is_one_stripped_line() -> None:
    subject = render_email(TEMPLATE, order_context()).subject
    assert subject == subject.strip()
    assert "\n" not in subject


@pytest.mark.parametrize("order_id", ["abc\nBcc: victim@example.com", "abc\r\nX: y", "a\u2028b"])
def test_subject_with_a_line_break_is_refused(order_id: str) -> None:
    with pytest.raises(ValueError, match="more than one line"):
        render_email(TEMPLATE, order_context(id=order_id))


def test_report_templates_are_reachable_under_their_prefix() -> None:
    assert "reports" in rendering.environment.loader.mapping  # type: ignore[union-attr]
    names = environment.list_templates()
    assert f"{TEMPLATE}.html" in names
    assert all(n.startswith(("notifications/", "reports/")) for n in names)


def test_a_package_without_templates_folder_gives_an_empty_loader() -> None:
    loader = rendering._package_loader("tests.unit")
    assert loader.list_templates() == []
