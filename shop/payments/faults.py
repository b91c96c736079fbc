"""Faults injected at the payment gateway boundary, for tests, drills and demos.

``SHOP_PAYMENT_FAULTS`` names a JSON file; while it is set, every gateway call first
consults the file's rules, shared by all processes (read and rewritten under a lock)::

    [{"op": "capture", "mode": "lost_answer", "times": 1},
     {"op": "*", "mode": "unavailable", "times": null}]

``op`` is a gateway method (``create_intent``, ``retrieve``, ``confirm``, ``capture``,
``cancel``, ``refund``, ``list_intents``) or ``*``; the first rule that matches and
still has ``times`` left (``null``: forever) is used up by one call. A rule with
``"after": "capture"`` waits until a ``capture`` call has been made. Every call is
counted in the file (``calls``), so a test can tell how often the provider was asked;
with ``record`` on, each call's time is kept too (``log``).
Modes:

- ``unavailable``: the request never reaches the provider (a transient error);
- ``lost_answer``: the provider applies the request, and its answer is lost;
- ``hang``: the call waits ``seconds`` first (to trip time limits);
- ``reject``: the provider refuses the request (a permanent error);
- ``auth``: the provider refuses the API key.

The file can be changed at any time; an absent or empty file injects nothing.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from shop.payments.gateway import (
    PaymentAuthError,
    PaymentGateway,
    PaymentProviderError,
    PaymentTransientError,
)
from shop.payments.wrapped import WrappedGateway

T = TypeVar("T")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.with_name(path.name + ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_rules(path: Path, rules: list[dict[str, Any]], *, record: bool = False) -> None:
    """Replace the rules and reset the counts (tests and drills call this, any process)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        path.write_text(json.dumps({"rules": rules, "calls": {}, "record": record, "log": []}))


def read_state(path: Path) -> dict[str, Any]:
    """The rules as they stand, and how often each operation was called."""
    try:
        state: dict[str, Any] = json.loads(path.read_text() or "{}")
    except (FileNotFoundError, json.JSONDecodeError):
        state = {}
    return {"rules": state.get("rules", []), "calls": state.get("calls", {}),
            "record": state.get("record", False), "log": state.get("log", [])}


def take_rule(path: Path, op: str, at: float | None = None) -> dict[str, Any] | None:
    """Count a call of ``op`` and use up the first rule matching it; None if none does."""
    if not path.exists():
        return None
    with _locked(path):
        state = read_state(path)
        calls: dict[str, int] = state["calls"]
        calls[op] = calls.get(op, 0) + 1
        if state["record"]:  # when the call was made, not when it got the file's lock
            state["log"].append([op, at if at is not None else time.time()])
        chosen = None
        for rule in state["rules"]:
            times, after = rule.get("times"), rule.get("after")
            armed = after is None or calls.get(after, 0) > 0
            if armed and rule.get("op", "*") in ("*", op) and (times is None or times > 0):
                if times is not None:
                    rule["times"] = times - 1
                chosen = rule
                break
        path.write_text(json.dumps(state))
        return chosen


class FaultyGateway(WrappedGateway):
    """Wraps a real gateway; applies the rules in ``path`` before each call."""

    def __init__(self, inner: PaymentGateway, path: Path) -> None:
        super().__init__(inner)
        self.path = path

    def around(self, op: str, call: Callable[[], T], key: str | None = None) -> T:
        rule = take_rule(self.path, op, at=time.time())
        mode = rule.get("mode") if rule else None
        if mode == "hang":
            time.sleep(float(rule.get("seconds", 30)))  # type: ignore[union-attr]
        elif mode == "unavailable":
            raise PaymentTransientError(f"injected: provider unavailable for {op}")
        elif mode == "reject":
            raise PaymentProviderError(f"injected: provider refused {op}")
        elif mode == "auth":
            raise PaymentAuthError(f"injected: API key refused for {op}")
        result = call()
        if mode == "lost_answer":
            raise PaymentTransientError(f"injected: the answer to {op} was lost")
        return result
