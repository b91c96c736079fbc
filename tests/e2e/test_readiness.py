"""Readiness keeps checkout up while the broker is away: ``/readyz`` asks only the
database, ``/healthz`` names the broker, and the outbox holds every order until the
relay can carry it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from shop.celery import reconfigure
from shop.config import get_settings
from shop.db import session_scope
from shop.messaging.service import outbox_lag
from tests.fixtures.api import order_body
from tests.fixtures.ports import free_port
from tests.fixtures.proxy import Forwarder
from tests.fixtures.stack import Stack, statuses, wait_terminal, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]
HELD = 5


def place(api: TestClient) -> str:
    response = api.post("/v1/orders", json=order_body(),
                        headers={"Idempotency-Key": str(uuid.uuid4())})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def unpublished() -> int:
    with session_scope() as session:
        return outbox_lag(session)[0]


@pytest.fixture
def broker_proxy(vhost_url: str) -> Iterator[tuple[Forwarder, str]]:
    """A TCP proxy to the test's vhost that the test switches off and on; yields it and
    the broker URL through it."""
    target = urlsplit(vhost_url)
    proxy = Forwarder(free_port(), (target.hostname or "127.0.0.1", target.port or 5672))
    credentials = target.netloc.rpartition("@")[0]
    proxied = target._replace(netloc=f"{credentials}@127.0.0.1:{proxy.port}").geturl()
    proxy.start()
    yield proxy, proxied
    proxy.stop()


def test_checkout_stays_ready_while_the_broker_is_unreachable_and_the_relay_catches_up(
        dummy_stack: Stack, broker_proxy: tuple[Forwarder, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from shop.api import create_app

    proxy, proxied = broker_proxy
    # The API (this process) and the relay reach RabbitMQ only through the proxy; the
    # worker is connected directly, so it works the orders as soon as they are published.
    monkeypatch.setenv("SHOP_BROKER_URL", proxied)
    get_settings.cache_clear()
    reconfigure(get_settings())
    dummy_stack.start_worker("w1")
    dummy_stack.start("relay", "-m", "shop.cli", "relay", env={"SHOP_BROKER_URL": proxied})
    with TestClient(create_app()) as api:
        first = place(api)
        assert wait_terminal(dummy_stack, [first]) == {first: "confirmed"}

        proxy.stop()  # RabbitMQ is unreachable for the API and the relay
        started = time.monotonic()
        held = [place(api) for _ in range(HELD)]
        took = time.monotonic() - started
        ready = api.get("/readyz")
        health = api.get("/healthz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ok"}
        assert health.status_code == 503
        assert "broker" in health.json()["down"]
        assert took < 10, f"{HELD} checkouts took {took:.1f}s with the broker away"
        time.sleep(2)  # the relay keeps trying meanwhile, and gets nowhere
        assert statuses(held) == dict.fromkeys(held, "pending")
        assert unpublished() >= HELD

        proxy.start()  # traffic returns: the relay publishes what the outbox held
        assert wait_terminal(dummy_stack, held, timeout=120) == dict.fromkeys(held, "confirmed")
        wait_until(lambda: unpublished() == 0, timeout=30, what="an empty outbox",
                   stack=dummy_stack)
        wait_until(lambda: api.get("/healthz").status_code == 200, timeout=30,
                   what="/healthz to be 200 again", stack=dummy_stack)
        assert api.get("/readyz").status_code == 200
