"""The admin pages' HTML: one autoescaping Jinja2 environment, its filters, and the
headers every page goes out with.

Templates live in ``shop/orders/admin/templates/admin/``. Everything a template prints is
escaped (a customer's name is only ever text), a missing variable is an error
(``StrictUndefined``), and the Content-Security-Policy lets no script run at all.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined

from shop.config import get_settings
from shop.notifications.rendering import money

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "X-Frame-Options": "DENY",  # a confirmation page cannot be framed and clicked through
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


_PATTERNS = {"minutes": "%Y-%m-%d %H:%M", "zone": "%Y-%m-%d %H:%M %Z",
             "seconds": "%Y-%m-%d %H:%M:%S %Z"}


def local(at: dt.datetime, precision: str = "minutes") -> str:
    """A time in the shop's time zone (``SHOP_TIMEZONE``): ``minutes``, ``zone`` (minutes
    and the zone's name) or ``seconds`` (and the zone's name)."""
    return at.astimezone(get_settings().tz).strftime(_PATTERNS[precision])


def age(at: dt.datetime, now: dt.datetime | None = None) -> str:
    """How long ago, roughly: ``45 s``, ``17 min``, ``3 h``, ``2 d``."""
    seconds = max(0, int(((now or dt.datetime.now(dt.UTC)) - at).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def as_json(value: Any) -> str:
    """A timeline entry's detail, compact; empty when there is none."""
    return "" if not value else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _build_environment() -> Environment:
    env = Environment(
        loader=PackageLoader("shop.orders.admin", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(money=money, local=local, age=age, as_json=as_json)
    return env


environment = _build_environment()


def page(template: str, *, status: int = 200, headers: Mapping[str, str] | None = None,
         **context: Any) -> HTMLResponse:
    """Render ``admin/<template>`` as a response with the pages' headers."""
    html = environment.get_template(f"admin/{template}").render(context)
    return HTMLResponse(html, status_code=status, headers={**HEADERS, **(headers or {})})
