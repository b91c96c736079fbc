"""The admin token never leaves the process: not in a log line at any level, not in an
error body, not in a header; and it is compared in constant time."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shop.web import deps
from tests.fixtures.api import ADMIN_TOKEN


def test_the_token_appears_in_no_log_line_and_no_answer(
        client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    near_miss = ADMIN_TOKEN[:-1] + "X"
    caplog.set_level(logging.DEBUG)
    answers = [
        client.get("/admin/orders", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}),
        client.get("/admin/orders", headers={"Authorization": f"Bearer {near_miss}"}),
        client.get("/admin/orders", auth=("eve", near_miss)),
        client.get("/admin/orders", headers={"Authorization": f"Token {ADMIN_TOKEN}"}),
        client.put("/admin/products/LEAK", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                   json={"name": "x", "price": -1}),
        client.get("/admin/", auth=("eve", near_miss)),
    ]
    assert [a.status_code for a in answers[:4]] == [200, 401, 401, 401]
    assert [a.status_code for a in answers[4:]] == [422, 401]
    for answer in answers:
        assert ADMIN_TOKEN not in answer.text
        assert ADMIN_TOKEN not in str(answer.headers)
        assert near_miss not in answer.text
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert caplog.records  # the requests were logged …
    assert near_miss not in logged  # … and a wrong guess is not kept either
    assert ADMIN_TOKEN not in logged


def test_the_token_is_compared_in_constant_time(client: TestClient,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[Any, Any]] = []
    constant_time = secrets.compare_digest

    def compare(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return constant_time(a, b)

    monkeypatch.setattr(deps.secrets, "compare_digest", compare)
    assert client.get("/admin/orders", headers={"Authorization": "Bearer nope"}
                      ).status_code == 401
    assert compared == [(b"nope", ADMIN_TOKEN.encode())]
