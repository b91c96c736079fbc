"""The worker's message consumer: undecodable messages are dead-lettered, not dropped.

Celery acknowledges (and so silently drops) a message it cannot decode, such as a
pickle on a JSON-only worker or a broken body. Rejecting it without requeue sends it
through the queue's dead-letter exchange to ``shop.dead_letter`` for a person to see.
Unknown task names are already rejected without requeue, so they land there too.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer

from shop import metrics

log = logging.getLogger(__name__)


class DeadLetteringConsumer(Consumer):  # type: ignore[misc]
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        log.critical("undecodable message (%s, content type %r): dead-lettering it",
                     exc, message.content_type)
        message.reject(requeue=False)
        metrics.DEAD_LETTERS.labels(task="undecodable").inc()
