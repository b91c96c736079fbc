"""Case 1, the ceiling: a bare Celery chain of five no-op tasks per order,
``check -> charge -> reserve -> group(confirm, fulfill)``, on the shop's own queues
with the shop's own reliability settings (``shop.celery.configure``: acks_late,
reject on worker lost, prefetch 1, publisher confirms, JSON, no result backend).

    celery -A bench.ceiling worker -c 2 -Q orders,payments,notifications

The last two tasks tell the bench they ran through a UDP datagram (``BENCH_TALLY``),
so no result backend is needed to know when the last order is done.
"""

from __future__ import annotations

import os
import socket

from celery import Celery, chain, group

from shop.celery import configure
from shop.config import get_settings

app = Celery("ceiling")
configure(app, get_settings())
_tally = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def report(kind: str, order_id: str) -> None:
    """Tell the bench that ``kind`` ran for ``order_id``."""
    address = os.environ.get("BENCH_TALLY")
    if address:
        host, _, port = address.partition(":")
        _tally.sendto(f"{kind}:{order_id}".encode(), (host, int(port)))


@app.task(name="ceiling.check", queue="orders", acks_late=True, ignore_result=True)
def check(order_id: str) -> str:
    return order_id


@app.task(name="ceiling.charge", queue="payments", acks_late=True, ignore_result=True)
def charge(order_id: str) -> str:
    return order_id


@app.task(name="ceiling.reserve", queue="orders", acks_late=True, ignore_result=True)
def reserve(order_id: str) -> str:
    return order_id


@app.task(name="ceiling.confirm", queue="notifications", acks_late=True, ignore_result=True)
def confirm(order_id: str) -> None:
    report("confirm", order_id)


@app.task(name="ceiling.fulfill", queue="orders", acks_late=True, ignore_result=True)
def fulfill(order_id: str) -> None:
    report("fulfill", order_id)


def workflow(order_id: str) -> chain:
    return chain(check.s(order_id), charge.s(), reserve.s(),
                 group(confirm.s(), fulfill.s()))
