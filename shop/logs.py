"""Logging: one order's trail across the API, the relay, beat and every worker.

Every line carries the request id that started the work (``X-Request-ID``, or one
made up at the API), the order id when there is one, and the Celery task id and name
inside a task. The request id travels with the order's messages (the outbox row keeps
it, the message carries it as a header), so one grep follows a checkout into every
step. Customers' email addresses are masked and secrets never reach a line.

``SHOP_LOG_FORMAT=json`` writes one JSON object per line; ``console`` (the default)
writes readable text. ``configure`` is called by each entry point: the API, the
worker and beat (through Celery's logging signal), the relay and the CLI.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("shop_request_id", default=None)
ORDER_ID: ContextVar[str | None] = ContextVar("shop_order_id", default=None)
TASK: ContextVar[tuple[str, str] | None] = ContextVar("shop_task", default=None)

_EMAIL = re.compile(r"([A-Za-z0-9])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
FIELDS = ("request_id", "order_id", "task_id", "task_name")


def mask(text: str) -> str:
    """``text`` with every email address reduced to its first letter and domain."""
    return _EMAIL.sub(r"\1***@\2", text)


def new_request_id(candidate: str | None = None) -> str:
    """``candidate`` if it is a sane request id (from ``X-Request-ID``), else a new one."""
    if candidate and _REQUEST_ID.match(candidate):
        return candidate
    return uuid.uuid4().hex


@contextmanager
def bound(*, request_id: str | None = None, order_id: str | None = None,
          task: tuple[str, str] | None = None) -> Iterator[None]:
    """Carry these ids on every line logged inside the block (and the outbox rows
    written inside it carry the request id on)."""
    request = REQUEST_ID.set(request_id) if request_id is not None else None
    order = ORDER_ID.set(order_id) if order_id is not None else None
    running = TASK.set(task) if task is not None else None
    try:
        yield
    finally:
        if running is not None:
            TASK.reset(running)
        if order is not None:
            ORDER_ID.reset(order)
        if request is not None:
            REQUEST_ID.reset(request)


class Context(logging.Filter):
    """Adds the ids to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = TASK.get()
        record.request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        record.order_id = getattr(record, "order_id", None) or ORDER_ID.get()
        record.task_id = task[0] if task else None
        record.task_name = task[1] if task else None
        return True


_plain_records = logging.getLogRecordFactory()


def _masked_record(*args: object, **kwargs: object) -> logging.LogRecord:
    """Every record of the process, with email addresses masked before any handler
    (ours, Celery's, uvicorn's, a test's) sees it.

    The message and each argument are masked where they stand: ``args`` keep their
    shape, since formatters read them (uvicorn's access lines unpack five of them).
    """
    record = _plain_records(*args, **kwargs)
    if "@" in str(record.msg):
        record.msg = mask(str(record.msg))
    if isinstance(record.args, Mapping):
        record.args = {key: _masked_arg(value) for key, value in record.args.items()}
    elif isinstance(record.args, tuple):
        record.args = tuple(_masked_arg(value) for value in record.args)
    return record


def _masked_arg(value: object) -> object:
    """``value``, or when its text holds an address a stand-in that prints masked
    (numbers stay numbers, for ``%d``)."""
    if value is None or isinstance(value, int | float):
        return value
    try:
        text = str(value)
    except Exception:  # a broken __str__ is the formatter's to report, not the caller's
        return value
    if "@" not in text:
        return value
    return mask(text) if isinstance(value, str) else _Masked(value)


class _Masked:
    """An argument whose ``%s`` and ``%r`` both show addresses masked."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return mask(str(self.value))

    def __repr__(self) -> str:
        return mask(repr(self.value))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") +
                f".{int(record.msecs):03d}Z", "level": record.levelname,
                "logger": record.name, "message": record.getMessage(),
                **{name: getattr(record, name, None) for name in FIELDS}}
        if record.exc_info:
            line["error"] = mask(self.formatException(record.exc_info))
        return json.dumps({k: v for k, v in line.items() if v is not None}, default=str)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(f"{name}={getattr(record, name)}" for name in FIELDS
                       if getattr(record, name, None))
        text = super().format(record)
        return f"{text}  [{ids}]" if ids else text


def formatter(kind: str) -> logging.Formatter:
    chosen: logging.Formatter
    if kind == "json":
        chosen = JsonFormatter()
        chosen.converter = time.gmtime
    else:
        chosen = ConsoleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    return chosen


def configure(kind: str, *, logger: logging.Logger | None = None) -> None:
    """Send ``logger``'s lines (default: the root's) to stderr in ``kind`` format, with the
    ids; the shop's own INFO lines show without any flag. Safe to call twice."""
    logging.setLogRecordFactory(_masked_record)
    target = logger or logging.getLogger()
    handler = next((h for h in target.handlers if getattr(h, "shop", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.shop = True  # type: ignore[attr-defined]
        handler.addFilter(Context())
        target.addHandler(handler)
    handler.setFormatter(formatter(kind))
    if target.level == logging.NOTSET or target.level > logging.INFO:
        target.setLevel(logging.INFO)
    logging.getLogger("shop").setLevel(logging.INFO)


def adopt(handlers: list[logging.Handler], kind: str) -> None:
    """Give handlers someone else set up (Celery's) the ids, the masking and the format."""
    logging.setLogRecordFactory(_masked_record)
    for handler in handlers:
        if not any(isinstance(f, Context) for f in handler.filters):
            handler.addFilter(Context())
        handler.setFormatter(formatter(kind))
