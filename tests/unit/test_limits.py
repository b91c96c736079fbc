"""The checkout rate limit: who the client is behind proxies, and a table that a flood of
new clients cannot use to reset anyone's limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from shop.config import get_settings
from shop.web.limits import CheckoutRateLimit

SLOW = 0.001  # tokens a second: nothing refills while a test runs


async def accept(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def limiter(**options: object) -> CheckoutRateLimit:
    return CheckoutRateLimit(accept, **{"rate": SLOW, "burst": 3.0, **options})  # type: ignore[arg-type]


def statuses(limit: CheckoutRateLimit, requests: Iterable[tuple[str, list[str]]]) -> list[int]:
    """The status of each checkout from ``(peer address, X-Forwarded-For header lines)``."""

    async def one(peer: str, forwarded: list[str]) -> int:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        scope: Scope = {"type": "http", "method": "POST", "path": "/v1/orders",
                        "client": (peer, 40000),
                        "headers": [(b"x-forwarded-for", line.encode()) for line in forwarded]}
        await limit(scope, receive, send)
        return int(sent[0]["status"])

    async def run() -> list[int]:
        return [await one(peer, forwarded) for peer, forwarded in requests]

    return asyncio.run(run())


PROXY = "10.0.0.2"  # the one trusted proxy in front of the API


def test_forged_forwarded_for_entries_do_not_give_a_client_fresh_buckets() -> None:
    """The proxy appends the address it saw; whatever the client wrote before it is
    ignored, so a new forged value each time still spends the same bucket."""
    limit = limiter(trust_forwarded=True)
    answers = statuses(limit, [(PROXY, [f"198.51.100.{i}, 203.0.113.7"]) for i in range(10)])
    assert answers == [200] * 3 + [429] * 7
    assert statuses(limit, [(PROXY, ["203.0.113.8"])]) == [200]  # another client


def test_a_forged_header_line_of_its_own_does_not_count_either() -> None:
    limit = limiter(trust_forwarded=True)
    answers = statuses(limit, [(PROXY, [f"198.51.100.{i}", "203.0.113.7"]) for i in range(10)])
    assert answers == [200] * 3 + [429] * 7


def test_with_two_trusted_proxies_the_client_is_second_from_the_right() -> None:
    limit = limiter(trust_forwarded=True, trusted_hops=2)
    answers = statuses(limit, [(PROXY, [f"198.51.100.{i}, 203.0.113.7, 10.0.0.1"])
                               for i in range(5)])
    assert answers == [200] * 3 + [429] * 2
    assert statuses(limit, [(PROXY, ["203.0.113.8, 10.0.0.1"])]) == [200]


def test_a_header_shorter_than_the_trusted_hops_counts_as_the_peer() -> None:
    limit = limiter(trust_forwarded=True, trusted_hops=2)
    answers = statuses(limit, [(PROXY, [f"198.51.100.{i}"]) for i in range(5)])
    assert answers == [200] * 3 + [429] * 2


def test_forwarded_for_is_ignored_unless_trusted() -> None:
    limit = limiter()
    answers = statuses(limit, [(PROXY, [f"198.51.100.{i}"]) for i in range(5)])
    assert answers == [200] * 3 + [429] * 2


def test_ten_thousand_new_clients_do_not_reset_a_limited_clients_bucket() -> None:
    limit = limiter()
    assert statuses(limit, [("203.0.113.7", [])] * 4) == [200, 200, 200, 429]
    flood = [(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", [])
             for i in range(CheckoutRateLimit.MAX_CLIENTS + 10)]
    statuses(limit, flood)
    assert statuses(limit, [("203.0.113.7", [])]) == [429]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_full_table_shares_one_bucket_among_new_clients_until_buckets_refill() -> None:
    clock = Clock()
    limit = limiter(rate=1.0, max_clients=3, clock=clock)
    statuses(limit, [(f"10.0.0.{i}", []) for i in range(3)])
    newcomers = statuses(limit, [(f"10.0.1.{i}", []) for i in range(5)])
    assert newcomers == [200] * 3 + [429] * 2  # one shared burst, nobody evicted
    assert statuses(limit, [("10.0.0.0", [])]) == [200]  # its own bucket, 2 tokens left

    clock.now += 3.0  # every bucket is full again: a full bucket is as good as none
    again = statuses(limit, [(f"10.0.2.{i}", []) for i in range(3) for _ in range(3)])
    assert again == [200] * 9  # each newcomer has a bucket of its own again


def test_the_trusted_hops_setting_reaches_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    from shop.api import create_app

    assert get_settings().trusted_proxy_hops == 1
    monkeypatch.setenv("SHOP_TRUST_FORWARDED_FOR", "true")
    monkeypatch.setenv("SHOP_TRUSTED_PROXY_HOPS", "2")
    monkeypatch.setenv("SHOP_CHECKOUT_RATE", str(SLOW))
    monkeypatch.setenv("SHOP_CHECKOUT_BURST", "2")
    get_settings.cache_clear()
    with TestClient(create_app()) as client:
        answers = [client.post("/v1/orders", json={}, headers={
            "X-Forwarded-For": f"198.51.100.{i}, 203.0.113.7, 10.0.0.1"}).status_code
            for i in range(4)]
    assert answers == [422, 422, 429, 429]  # an empty body is refused after the limit
