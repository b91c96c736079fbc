"""The warehouse consumer's settling of a delivery (acknowledged after the commit,
dead-lettered with a reason, put back on other errors), with the use case replaced."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from shop.orders.fulfillment import consumer, service

ORDER = str(uuid.uuid4())
DELIVERED = {"message_id": "m-1", "order_id": ORDER, "shipment_id": "p-1",
             "delivered_at": "2026-12-04T10:00:00Z"}


@dataclass
class FakeMessage:
    body: bytes
    routing_key: str = "fulfillment.delivered"
    message_id: str | None = "m-1"
    settled: list[str] = field(default_factory=list)
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str = "application/json"
    content_encoding: str = "utf-8"

    @property
    def delivery_info(self) -> dict[str, Any]:
        return {"routing_key": self.routing_key}

    @property
    def properties(self) -> dict[str, Any]:
        return {"message_id": self.message_id}

    def ack(self) -> None:
        self.settled.append("ack")

    def requeue(self) -> None:
        self.settled.append("requeue")

    def reject(self, requeue: bool) -> None:
        self.settled.append(f"reject(requeue={requeue})")


def handled(message: FakeMessage) -> tuple[str, list[str]]:
    reasons: list[str] = []

    def dead_letter(msg: Any, reason: str) -> None:
        reasons.append(reason)
        msg.ack()

    return consumer.handle(message, dead_letter=dead_letter), reasons


def test_an_applied_message_is_acknowledged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "apply", lambda session, message: "applied")
    message = FakeMessage(json.dumps(DELIVERED).encode())

    assert handled(message) == ("applied", [])
    assert message.settled == ["ack"]


@pytest.mark.parametrize(("body", "message_id", "routing_key", "why"), [
    (b"{", "m-1", "fulfillment.delivered", "malformed"),
    (json.dumps(DELIVERED).encode(), "m-2", "fulfillment.delivered", "message_id"),
    (json.dumps(DELIVERED).encode(), "m-1", "fulfillment.lost", "routing key"),
])
def test_what_cannot_be_read_is_dead_lettered_with_its_reason(
        monkeypatch: pytest.MonkeyPatch, body: bytes, message_id: str, routing_key: str,
        why: str) -> None:
    monkeypatch.setattr(service, "apply", lambda session, message: pytest.fail("applied"))
    message = FakeMessage(body, routing_key=routing_key, message_id=message_id)

    outcome, reasons = handled(message)

    assert outcome == "dead_letter"
    assert len(reasons) == 1
    assert why in reasons[0]
    assert message.settled == ["ack"]  # after the republish to shop.dlx


def test_a_refused_message_is_dead_lettered(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(session: Any, message: Any) -> str:
        raise service.Rejected(f"unknown order {ORDER}")

    monkeypatch.setattr(service, "apply", refuse)
    outcome, reasons = handled(FakeMessage(json.dumps(DELIVERED).encode()))
    assert (outcome, reasons) == ("dead_letter", [f"unknown order {ORDER}"])


def test_another_error_puts_it_back_until_it_failed_too_often(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(session: Any, message: Any) -> str:
        raise RuntimeError("database gone")

    counts = iter(range(1, 100))
    monkeypatch.setattr(service, "apply", broken)
    monkeypatch.setattr(consumer, "count_delivery", lambda session, **_: next(counts))
    monkeypatch.setattr(consumer.time, "sleep", lambda seconds: None)
    outcomes = []
    for _ in range(10):
        message = FakeMessage(json.dumps(DELIVERED).encode())
        outcome, reasons = handled(message)
        outcomes.append((outcome, message.settled))

    assert outcomes[:9] == [("retry", ["requeue"])] * 9  # SHOP_MAX_DELIVERIES is 10
    assert outcomes[9] == ("dead_letter", ["ack"])
    assert "failed 10 times" in reasons[0]
