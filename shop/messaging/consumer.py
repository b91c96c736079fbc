"""The worker's message consumer: undecodable messages are dead-lettered, not dropped,
and native delayed delivery is set up once, on the node the worker reached.

Celery acknowledges (and so silently drops) a message it cannot decode, such as a
pickle on a JSON-only worker or a broken body. Rejecting it without requeue sends it
through the queue's dead-letter exchange to ``shop.dead_letter`` for a person to see.
Unknown task names are already rejected without requeue, so they land there too.

On quorum queues, Celery's ``DelayedDelivery`` step declares the delayed-delivery
exchanges and queues each time the consumer (re)connects, on every URL of
``SHOP_BROKER_URL`` as if each were a broker of its own. On a cluster they are nodes of
one broker, and a node that is down held a worker that had just failed over for about
18 s (four tries at the dead node) before it consumed again (the cluster chaos
scenarios saw it). :class:`DelayedDeliveryOnConnectedNode` declares the same once,
through the node the consumer's connection reached.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer
from celery.worker.consumer.delayed_delivery import (
    MAX_RETRIES,
    RETRIED_EXCEPTIONS,
    RETRY_INTERVAL,
    DelayedDelivery,
)
from kombu.utils.functional import retry_over_time
from kombu.utils.url import maybe_sanitize_url

from shop import metrics

log = logging.getLogger(__name__)

CELERY_DELAYED_DELIVERY = "celery.worker.consumer.delayed_delivery:DelayedDelivery"


class DelayedDeliveryOnConnectedNode(DelayedDelivery):  # type: ignore[misc]
    """Celery's delayed-delivery set-up, through the consumer's own node only."""

    def start(self, c: Any) -> None:
        self._validate_configuration(c.app)
        url = c.connection.as_uri(include_password=True)
        try:
            retry_over_time(self._setup_delayed_delivery, args=(c, url),  # type: ignore[no-untyped-call]
                            catch=RETRIED_EXCEPTIONS, errback=self._on_retry,
                            interval_start=RETRY_INTERVAL, max_retries=MAX_RETRIES)
        except Exception as exc:  # as Celery does: the queues are declared by then
            log.warning("could not set up delayed delivery on %s: %s",
                        maybe_sanitize_url(url), exc)


class DeadLetteringConsumer(Consumer):  # type: ignore[misc]
    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        default_steps = [
            f"{__name__}:DelayedDeliveryOnConnectedNode" if step == CELERY_DELAYED_DELIVERY
            else step for step in Consumer.Blueprint.default_steps]

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        log.critical("undecodable message (%s, content type %r): dead-lettering it",
                     exc, message.content_type)
        message.reject(requeue=False)
        metrics.DEAD_LETTERS.labels(task="undecodable").inc()
