"""schemathesis against the served ``/openapi.json`` on PostgreSQL, with and without the
admin token, one operation at a time and (stateful) in chains of calls on real orders:
whatever it sends, the API never answers 5xx, and every answer has a status, a content
type and a body that the schema documents (CI guards this on every run).

PostgreSQL, not SQLite: SQLite accepts what PostgreSQL refuses (2^63, NUL bytes, …).
"""

from __future__ import annotations

import itertools
import zlib
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fixtures.api import ADMIN_TOKEN, order_body
from tests.fixtures.webhooks import WEBHOOK_SECRET

pytestmark = [pytest.mark.postgres]
# Beyond "no 5xx": every answer is one the schema documents, in the documented shape.
CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]
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
            case.validate_response(response, checks=CONFORMANCE, headers=headers)

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


def test_sequences_of_calls_get_no_5xx_and_answer_as_documented(live_api: str) -> None:
    """Stateful: schemathesis chains operations through the links it infers from the
    schema (place an order, then read, cancel, retry or resend that very order), so the
    fuzzing reaches real rows instead of 404s."""
    schema = schemathesis.openapi.from_url(f"{live_api}/openapi.json")
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    machine = schema.as_state_machine()
    assert "POST_v1_orders___202_GetOrder__GET_v1_orders_order_id_" in vars(machine)
    answered: list[tuple[str, int]] = []

    class Calls(machine):  # type: ignore[misc,valid-type]
        def before_call(self, case: Any) -> None:
            # Random SKUs never name a product: every other checkout is a real one, so
            # that the chains start from an order that exists.
            # (decided by the drawn body, so that hypothesis replays the same steps)
            if (case.method, case.path) == ("POST", "/v1/orders"):
                drawn = zlib.crc32(repr(case.body).encode())
                if drawn % 2:
                    case.body = order_body(email=f"fuzz{drawn}@example.com")

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": headers, "timeout": 30}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            answered.append((f"{case.method} {case.path}", response.status_code))
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} -> {response.status_code}\n"
                f"{response.text[:500]}")
            case.validate_response(response, checks=CONFORMANCE, headers=headers)

    Calls.run(settings=settings(max_examples=40, deadline=None, derandomize=True,
                                stateful_step_count=6,
                                suppress_health_check=list(HealthCheck)))
    assert ("GET /v1/orders/{order_id}", 200) in answered  # a placed order, read back
