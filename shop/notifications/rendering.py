"""Email rendering: one autoescaping jinja2 Environment shared by every domain.

Templates live in ``shop/notifications/templates`` (prefix ``notifications/``) and
``shop/reports/templates`` (prefix ``reports/``). An email named ``notifications/x``
is three files: ``x.subject.txt``, ``x.txt`` and ``x.html``. HTML is autoescaped,
text is not, and a missing context variable is an error (``StrictUndefined``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import (
    BaseLoader,
    DictLoader,
    Environment,
    PackageLoader,
    PrefixLoader,
    StrictUndefined,
    Undefined,
    select_autoescape,
)

# ISO 4217 minor units that differ from the usual two.
_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX",
         "UYI", "VND", "VUV", "XAF", "XOF", "XPF"),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    """The three parts of a rendered email."""

    subject: str
    text: str
    html: str


def currency_exponent(currency: str) -> int:
    """How many decimal places the currency's minor unit has (ISO 4217)."""
    return _EXPONENTS.get(currency.upper(), 2)


def money(amount_minor: int, currency: str) -> str:
    """Format integer minor units exactly, e.g. ``money(123456, "USD") == "1,234.56 USD"``."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        raise TypeError(f"money needs integer minor units, got {type(amount_minor).__name__}")
    code = currency.upper()
    if len(code) != 3 or not code.isalpha() or not code.isascii():
        raise ValueError(f"not an ISO 4217 currency code: {currency!r}")
    exponent = currency_exponent(code)
    sign = "-" if amount_minor < 0 else ""
    major, minor = divmod(abs(amount_minor), 10**exponent)
    fraction = f".{minor:0{exponent}d}" if exponent else ""
    return f"{sign}{major:,}{fraction} {code}"


def _money_filter(amount_minor: Any, currency: Any) -> str:
    """``money`` as a filter: a missing value raises instead of being formatted."""
    for value in (amount_minor, currency):
        if isinstance(value, Undefined):
            value._fail_with_undefined_error()
    return money(amount_minor, currency)


def _package_loader(package: str) -> BaseLoader:
    """The package's ``templates`` folder, or an empty loader if it has none yet."""
    try:
        return PackageLoader(package, "templates")
    except ValueError:  # folder missing (git does not keep empty directories)
        return DictLoader({})


def _build_environment() -> Environment:
    env = Environment(
        loader=PrefixLoader(
            {
                "notifications": _package_loader("shop.notifications"),
                "reports": _package_loader("shop.reports"),
            }
        ),
        autoescape=select_autoescape(
            enabled_extensions=("html", "htm", "xml"), default_for_string=True, default=False
        ),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["money"] = _money_filter
    return env


environment = _build_environment()


def render_subject(template: str, context: Mapping[str, Any]) -> str:
    """Render ``<template>.subject.txt`` to one stripped line; refuse line breaks."""
    subject = environment.get_template(f"{template}.subject.txt").render(context).strip()
    if len(subject.splitlines()) > 1:
        raise ValueError(f"subject of {template!r} spans more than one line")
    if not subject:
        raise ValueError(f"subject of {template!r} is empty")
    return subject


def render_email(template: str, context: Mapping[str, Any]) -> RenderedEmail:
    """Render the subject, text and HTML parts of ``template`` (e.g. ``notifications/x``)."""
    return RenderedEmail(
        subject=render_subject(template, context),
        text=environment.get_template(f"{template}.txt").render(context),
        html=environment.get_template(f"{template}.html").render(context),
    )
