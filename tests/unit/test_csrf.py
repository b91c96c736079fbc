"""Form tokens and the same-origin check that keep another site's page from acting with
an admin's browser credentials (``shop.web.csrf``)."""

from __future__ import annotations

import pytest

from shop.web import csrf

SECRET = "an-admin-token-of-some-length"
NOW = 1_790_000_000.0


def test_a_form_token_holds_for_its_hour_and_the_next_then_expires() -> None:
    token = csrf.form_token(SECRET, purpose="retry:1", at=NOW)
    assert len(token) == 64
    assert csrf.valid_token(SECRET, token, purpose="retry:1", at=NOW)
    assert csrf.valid_token(SECRET, token, purpose="retry:1", at=NOW + csrf.WINDOW_SECONDS)
    assert not csrf.valid_token(SECRET, token, purpose="retry:1",
                                at=NOW + 2 * csrf.WINDOW_SECONDS)
    assert not csrf.valid_token(SECRET, token, purpose="retry:1", at=NOW - csrf.WINDOW_SECONDS)
    assert not csrf.valid_token(SECRET, token, purpose="cancel:1", at=NOW)
    assert not csrf.valid_token(f"{SECRET}-rotated", token, purpose="retry:1", at=NOW)
    assert not csrf.valid_token(SECRET, "é" * 64, purpose="retry:1", at=NOW)


@pytest.mark.parametrize(("headers", "same"), [
    ({"host": "shop.example"}, True),  # curl: nothing to compare
    ({"host": "shop.example", "origin": "https://shop.example"}, True),
    ({"host": "shop.example:443", "origin": "https://shop.example"}, True),
    ({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}, True),
    ({"host": "Shop.Example", "referer": "https://shop.example/admin/"}, True),
    ({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8001"}, False),
    ({"host": "shop.example", "origin": "https://evil.example"}, False),
    ({"host": "shop.example", "origin": "https://shop.example.evil.example"}, False),
    ({"host": "shop.example", "origin": "null"}, False),
    ({"host": "shop.example", "referer": "https://evil.example/shop.example"}, False),
    ({"host": "shop.example", "referer": "http://[broken"}, False),
    ({"host": "shop.example", "origin": "https://evil.example",
      "referer": "https://shop.example/"}, False),  # Origin wins
])
def test_same_origin_compares_the_browsers_word_with_the_host(
        headers: dict[str, str], same: bool) -> None:
    assert csrf.same_origin(headers) is same
