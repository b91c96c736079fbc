"""Faults the rig injects from outside the shop's code: every task message published
twice, and poison messages."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

import amqp


def amqp_connection(url: str) -> amqp.Connection:
    parts = urlsplit(url)
    conn = amqp.Connection(host=f"{parts.hostname}:{parts.port or 5672}",
                           userid=unquote(parts.username or "guest"),
                           password=unquote(parts.password or "guest"),
                           virtual_host=unquote(parts.path[1:] or "/"))
    conn.connect()
    return conn


TWICE = Path(__file__).parent / "twice"  # its sitecustomize publishes every task twice


def twice_env(log: Path) -> dict[str, str]:
    """The environment that makes the shop's processes publish every task message twice."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, (str(TWICE),
                                                        os.environ.get("PYTHONPATH")))),
            "SHOP_CHAOS_TWICE_LOG": str(log)}


def publish_undecodable(broker_url: str, queue: str = "orders") -> None:
    """A message no worker can decode: JSON by its content type, not by its body."""
    conn = amqp_connection(broker_url)
    try:
        channel = conn.channel()
        channel.basic_publish(amqp.Message(b"\xff\xfe{not json", content_type="application/json",
                                           content_encoding="utf-8", delivery_mode=2),
                              exchange=queue, routing_key=queue)
    finally:
        conn.close()
