"""schemathesis against the served ``/openapi.json`` on PostgreSQL, with and without the
admin token: whatever it sends, the API never answers 5xx (CI guards this on every run).

PostgreSQL, not SQLite: SQLite accepts what PostgreSQL refuses (2^63, NUL bytes, …).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.fixtures.api import ADMIN_TOKEN
from tests.fixtures.webhooks import WEBHOOK_SECRET

pytestmark = [pytest.mark.postgres]
EXAMPLES = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture
def db_url(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Only PostgreSQL here (overrides the SQLite-and-PostgreSQL fixture); webhooks on,
    so that their route answers what it would in production (400 for a bad signature)."""
    monkeypatch.setenv("SHOP_STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    return pg_url


def fuzz(base_url: str, headers: dict[str, str]) -> list[str]:
    """Every operation of the served schema, ``max_examples`` cases each of valid and of
    invalid input; returns the cases sent."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    seen: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(generation_mode=mode))
        @EXAMPLES
        def run(case: Any) -> None:
            seen.append(f"{case.method} {case.path}")
            response = case.call(headers=headers, timeout=30)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} -> {response.status_code}\n"
                f"{case.as_curl_command(headers=headers)}\n{response.text[:500]}")

        try:
            run()
        except Unsatisfiable:  # nothing to get wrong: the operation takes no input
            assert mode is GenerationMode.NEGATIVE
    return seen


def test_no_request_gets_a_5xx_without_the_token(live_api: str) -> None:
    seen = fuzz(live_api, {})
    assert {"POST /v1/orders", "PUT /admin/products/{sku}", "POST /webhooks/stripe"} <= set(seen)


def test_no_request_gets_a_5xx_with_the_token(live_api: str) -> None:
    seen = fuzz(live_api, {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert {"POST /v1/orders", "PUT /admin/products/{sku}"} <= set(seen)
