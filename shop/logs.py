"""Logging: one order's trail across the API, the relay, beat and every worker.

Every line carries the request id that started the work (``X-Request-ID``, or one
made up at the API), the order id when there is one, and the Celery task id and name
inside a task. The request id travels with the order's messages (the outbox row keeps
it, the message carries it as a header), so one grep follows a checkout into every
step. Customers' email addresses are masked and secrets never reach a line.

``SHOP_LOG_FORMAT=json`` writes one JSON object per line; ``console`` (the default)
writes readable text; ``SHOP_LOG_LEVEL`` chooses the least severe line. ``configure``
is called by each entry point: the API (where it also takes over uvicorn's loggers, so
its access and error lines come out in the shop's format, with the request id), the
worker and beat (through Celery's logging signal), the relay and the CLI. A traceback
is part of its line (the ``error`` field in JSON), masked like the message; Python's
warnings and uncaught exceptions go through logging too.
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
from typing import Any

from shop.config import get_settings

REQUEST_ID: ContextVar[str | None] = ContextVar("shop_request_id", default=None)
ORDER_ID: ContextVar[str | None] = ContextVar("shop_order_id", default=None)
TASK: ContextVar[tuple[str, str] | None] = ContextVar("shop_task", default=None)

_EMAIL = re.compile(r"([A-Za-z0-9])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
FIELDS = ("request_id", "order_id", "task_id", "task_name")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# uvicorn's loggers: its dictConfig gives them their own handlers and formatters (and
# stops them propagating); ``configure`` sends their lines through the root's instead.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


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


def _ids(record: logging.LogRecord) -> dict[str, object]:
    """The record's ids, masked too (an order id comes from a message's arguments, which
    a poison message may fill with anything)."""
    found = {name: getattr(record, name, None) for name in FIELDS}
    return {name: mask(value) if isinstance(value, str) else value
            for name, value in found.items()}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") +
                f".{int(record.msecs):03d}Z", "level": record.levelname,
                "logger": record.name, "message": mask(record.getMessage()),
                **_ids(record)}
        if record.exc_info:
            line["error"] = mask(self.formatException(record.exc_info))
        elif record.exc_text:
            line["error"] = mask(record.exc_text)
        if record.stack_info:
            line["stack"] = mask(self.formatStack(record.stack_info))
        return json.dumps({k: v for k, v in line.items() if v is not None}, default=str)


class ConsoleFormatter(logging.Formatter):
    """Readable text; a traceback follows its line, masked like the message."""

    def formatException(self, ei: Any) -> str:
        return mask(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return mask(super().formatStack(stack_info))

    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(f"{name}={value}" for name, value in _ids(record).items() if value)
        text = mask(super().format(record))  # a traceback another handler cached too
        return f"{text}  [{ids}]" if ids else text


def formatter(kind: str) -> logging.Formatter:
    chosen: logging.Formatter
    if kind == "json":
        chosen = JsonFormatter()
        chosen.converter = time.gmtime
    else:
        chosen = ConsoleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    return chosen


def configure(kind: str, *, level: str | None = None,
              logger: logging.Logger | None = None) -> None:
    """Send ``logger``'s lines (default: the root's, and then uvicorn's too) to stderr in
    ``kind`` format, with the ids, from ``level`` up (default: ``SHOP_LOG_LEVEL``). Safe
    to call twice."""
    level = level or _setting_level()
    logging.setLogRecordFactory(_masked_record)
    target = logger or logging.getLogger()
    handler = next((h for h in target.handlers if getattr(h, "shop", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.shop = True  # type: ignore[attr-defined]
        handler.addFilter(Context())
        target.addHandler(handler)
    handler.setFormatter(formatter(kind))
    target.setLevel(level)
    logging.getLogger("shop").setLevel(level)
    if logger is None:
        for name in UVICORN_LOGGERS:
            taken = logging.getLogger(name)
            taken.handlers.clear()
            taken.propagate = True
            taken.setLevel(logging.NOTSET)
        _everything_through_logging()


def uvicorn_handler() -> logging.Handler:
    """stderr in ``SHOP_LOG_FORMAT``, with the ids: the handler of
    ``deploy/systemd/uvicorn-logging.json`` (``uvicorn --log-config``), for the lines
    uvicorn's supervisor writes before any process imports the app (``--workers``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(Context())
    handler.setFormatter(formatter(get_settings().log_format))
    return handler


def warnings_first(kind: str) -> None:
    """Python's warnings in ``kind`` format before Celery sets logging up (the worker
    warns about running as root before that); ``adopt`` hands them on to the root."""
    early = logging.getLogger("py.warnings")
    configure(kind, logger=early)
    early.propagate = False
    logging.captureWarnings(True)


def adopt(handlers: list[logging.Handler], kind: str, *, level: str | None = None) -> None:
    """Give handlers someone else set up (Celery's) the ids, the masking and the format;
    the root logs from ``level`` up (default: ``SHOP_LOG_LEVEL``)."""
    level = level or _setting_level()
    logging.setLogRecordFactory(_masked_record)
    for handler in handlers:
        if not any(isinstance(f, Context) for f in handler.filters):
            handler.addFilter(Context())
        handler.setFormatter(formatter(kind))
    logging.getLogger().setLevel(level)
    logging.getLogger("shop").setLevel(level)
    early = logging.getLogger("py.warnings")
    early.handlers = [h for h in early.handlers if not getattr(h, "shop", False)]
    early.propagate = True
    _everything_through_logging()


def _setting_level() -> str:
    return get_settings().log_level


def _everything_through_logging() -> None:
    """Python's warnings and an uncaught exception's traceback become log lines."""
    logging.captureWarnings(True)
    sys.excepthook = _uncaught


def _uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("shop").critical("uncaught exception", exc_info=(kind, value, tb))
