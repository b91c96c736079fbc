"""Cross-site request forgery defences for admins who sign in from a browser.

A browser sends HTTP Basic credentials again by itself, to every request for the site,
including one that a page on another site starts (a form that posts to ``/admin/…``).
Two defences, each enough on its own against such a forgery:

- every form the admin pages serve carries a token only the server can make: an
  HMAC-SHA256, keyed by the admin token, of what the form does and the hour it was
  served; it is accepted during that hour and the next, compared in constant time;
- an unsafe request that a browser says comes from another host (``Origin``, else
  ``Referer``) is refused, whatever it carries.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

WINDOW_SECONDS = 3600
_DEFAULT_PORTS = (":80", ":443")


def form_token(secret: str, *, purpose: str, at: float | None = None) -> str:
    """The token for a form that does ``purpose`` (e.g. ``retry:<order id>``)."""
    return _mac(secret, purpose, _window(at))


def valid_token(secret: str, token: str, *, purpose: str, at: float | None = None) -> bool:
    """Whether ``token`` was made for ``purpose`` in this window or the one before."""
    presented = token.encode("utf-8", "replace")
    window = _window(at)
    return any(hmac.compare_digest(presented, _mac(secret, purpose, w).encode())
               for w in (window, window - 1))


def same_origin(headers: Mapping[str, str]) -> bool:
    """False when a browser says the request comes from a page on another host.

    ``Origin`` is read first, then ``Referer``; without either (curl, scripts) there is
    nothing to compare and the request passes: it cannot carry a browser's credentials
    on another site's behalf. ``Origin: null`` (a sandboxed or opaque page) never passes.
    """
    source = headers.get("origin") or headers.get("referer")
    if source is None:
        return True
    host = headers.get("host", "")
    try:
        netloc = urlsplit(source).netloc
    except ValueError:
        return False
    return bool(netloc) and _normal(netloc) == _normal(host)


def _normal(netloc: str) -> str:
    """``host[:port]`` lower-cased, without a default port (a proxy may add or drop it)."""
    netloc = netloc.rsplit("@", 1)[-1].lower()
    for port in _DEFAULT_PORTS:
        netloc = netloc.removesuffix(port)
    return netloc


def _window(at: float | None) -> int:
    return int((time.time() if at is None else at) // WINDOW_SECONDS)


def _mac(secret: str, purpose: str, window: int) -> str:
    message = f"shop.admin.form|{purpose}|{window}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
