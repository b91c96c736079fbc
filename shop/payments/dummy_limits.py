"""The dummy provider's rate limits, enforced as Stripe enforces its own: a 429 with
``Retry-After`` once a second holds more requests than the account's or an endpoint's
limit. Shared by every process through one file under the dummy's state folder (a
sliding window of the last second's request times, kept under an ``fcntl`` lock), so
a benchmark against the dummy meets the same wall a shop meets at Stripe, and counts
the 429s it drew (``limited``).
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Callable
from pathlib import Path

from shop.payments.gateway import PaymentRateLimited

ACCOUNT = "account"
WINDOW = 1.0


class DummyLimits:
    """At most ``account_rps`` requests a second in all, ``endpoint_rps`` per endpoint."""

    def __init__(self, root: Path, *, account_rps: float, endpoint_rps: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = root / "rate_window.json"
        self.limits = {ACCOUNT: account_rps}
        self.endpoint_rps = endpoint_rps
        self._clock = clock

    def admit(self, endpoint: str) -> None:
        """Count one request, or refuse it with a 429 (``PaymentRateLimited``)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                handle.seek(0)
                state = json.loads(handle.read() or "{}")
                now = self._clock()
                seen = {name: [t for t in times if t > now - WINDOW]
                        for name, times in state.get("seen", {}).items()}
                for name in (ACCOUNT, endpoint):
                    limit = self.limits.get(name, self.endpoint_rps)
                    times = seen.get(name, [])
                    if len(times) >= limit:
                        state["limited"] = int(state.get("limited", 0)) + 1
                        self._write(handle, {**state, "seen": seen})
                        raise PaymentRateLimited(
                            f"dummy 429: {name} is over {limit:g} requests/s",
                            retry_after=max(0.05, min(times) + WINDOW - now))
                for name in (ACCOUNT, endpoint):
                    seen.setdefault(name, []).append(now)
                self._write(handle, {**state, "seen": seen})
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def limited(self) -> int:
        """How many requests were refused with a 429 so far."""
        try:
            return int(json.loads(self.path.read_text() or "{}").get("limited", 0))
        except FileNotFoundError:
            return 0

    @staticmethod
    def _write(handle: object, state: dict[str, object]) -> None:
        handle.seek(0)  # type: ignore[attr-defined]
        handle.truncate()  # type: ignore[attr-defined]
        handle.write(json.dumps(state))  # type: ignore[attr-defined]
        handle.flush()  # type: ignore[attr-defined]
