"""Loaded by the shop's processes in the "every task message twice" scenario only
(the rig puts this directory on their ``PYTHONPATH``): every task message they publish
is published a second time, identical (same task id, body, headers and properties),
so RabbitMQ delivers two copies, often to two workers at once. Each second copy is
noted in ``$SHOP_CHAOS_TWICE_LOG`` so the test can count them."""

from __future__ import annotations

import os
from typing import Any

from kombu import messaging

_publish = messaging.Producer.publish


def _twice(self: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
    result = _publish(self, body, *args, **kwargs)
    headers = kwargs.get("headers") or {}
    if "task" in headers and "id" in headers:
        _publish(self, body, *args, **kwargs)
        with open(os.environ["SHOP_CHAOS_TWICE_LOG"], "a") as log:
            log.write(f"{headers['id']}\n")
    return result


messaging.Producer.publish = _twice
