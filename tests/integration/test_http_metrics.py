"""The API's request rate, errors and latency by route template, served at /metrics."""

from __future__ import annotations

import re
import uuid

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from shop.web.http_metrics import HttpMetrics


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    found = re.search("^" + re.escape(name) + r"\{" + re.escape(wanted) + r"\} (\S+)$", text,
                      re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def counted(text: str, method: str, route: str, status: int) -> float:
    return sample(text, "shop_http_requests_total", method=method, route=route,
                  status=str(status))


def test_requests_are_counted_and_timed_by_route_template_not_raw_path(
        client: TestClient) -> None:
    before = client.get("/metrics").text
    assert client.get("/v1/products").status_code == 200
    for _ in range(2):
        assert client.get(f"/v1/orders/{uuid.uuid4()}").status_code == 404
    assert client.get("/no/such/page").status_code == 404
    assert client.delete("/v1/products").status_code == 405
    after = client.get("/metrics").text

    def moved(method: str, route: str, status: int) -> float:
        return counted(after, method, route, status) - counted(before, method, route, status)

    assert moved("GET", "/v1/products", 200) == 1
    assert moved("GET", "/v1/orders/{order_id}", 404) == 2
    assert moved("GET", "unmatched", 404) == 1
    assert moved("DELETE", "/v1/products", 405) == 1
    assert "/v1/orders/" + "0" not in after  # no raw path became a label
    assert sample(after, "shop_http_request_duration_seconds_count", method="GET",
                  route="/v1/orders/{order_id}") - sample(
        before, "shop_http_request_duration_seconds_count", method="GET",
        route="/v1/orders/{order_id}") == 2


def test_a_request_that_raises_counts_as_a_500_of_its_route() -> None:
    app = FastAPI()

    @app.get("/boom/{thing}")
    def boom(thing: str) -> None:
        raise RuntimeError(thing)

    app.add_middleware(HttpMetrics)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        def now() -> float:
            return REGISTRY.get_sample_value("shop_http_requests_total", {
                "method": "GET", "route": "/boom/{thing}", "status": "500"}) or 0.0

        before = now()
        assert test_client.get("/boom/x").status_code == 500
        assert now() == before + 1
