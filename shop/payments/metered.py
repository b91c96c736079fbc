"""Every provider call timed and counted, by operation and outcome (``shop.metrics``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from shop import metrics
from shop.payments.gateway import PaymentAuthError, PaymentDeclined, PaymentError
from shop.payments.wrapped import WrappedGateway

T = TypeVar("T")


class MeteredGateway(WrappedGateway):
    def around(self, op: str, call: Callable[[], T], key: str | None = None) -> T:
        started, outcome = time.perf_counter(), "ok"
        try:
            return call()
        except PaymentDeclined:
            outcome = "declined"
            raise
        except PaymentAuthError:
            outcome = "auth_refused"
            metrics.PROVIDER_AUTH_ERRORS.inc()
            raise
        except PaymentError as exc:
            outcome = type(exc).__name__
            raise
        finally:
            metrics.PROVIDER_SECONDS.labels(operation=op, outcome=outcome).observe(
                time.perf_counter() - started)
