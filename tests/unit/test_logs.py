"""Log lines: the ids they carry, JSON or text, and no customer address in the clear."""

from __future__ import annotations

import copy
import io
import json
import logging
from collections.abc import Iterator

import pytest
import uvicorn
from uvicorn.config import LOGGING_CONFIG

from shop import logs


def captured(kind: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    logger = logging.getLogger(f"shop.test.{kind}")
    logger.handlers.clear()
    logger.propagate = False
    logs.configure(kind, logger=logger)
    handler = next(h for h in logger.handlers if getattr(h, "shop", False))
    handler.setStream(stream)  # type: ignore[attr-defined]
    return logger, stream


def test_a_json_line_carries_the_request_order_and_task() -> None:
    logger, stream = captured("json")
    with logs.bound(request_id="req-1", order_id="ord-9",
                    task=("task-7", "shop.orders.check_inventory")):
        logger.info("checked %s for %s", "stock", "ada.lovelace@example.com")
    line = json.loads(stream.getvalue())
    assert line["message"] == "checked stock for a***@example.com"
    assert (line["request_id"], line["order_id"], line["task_id"], line["task_name"]) == (
        "req-1", "ord-9", "task-7", "shop.orders.check_inventory")
    assert line["level"] == "INFO"


def test_outside_any_request_a_line_has_no_ids_and_the_text_format_reads_plainly() -> None:
    logger, stream = captured("console")
    logger.warning("relay started")
    assert stream.getvalue().rstrip().endswith("relay started")
    with logs.bound(request_id="req-2"):
        logger.warning("again")
    assert stream.getvalue().splitlines()[-1].endswith("[request_id=req-2]")


def test_a_request_id_from_outside_is_kept_only_when_it_is_sane() -> None:
    assert logs.new_request_id("abc-123") == "abc-123"
    for hostile in ("", "a" * 101, "x\ny", "<script>", "id with spaces"):
        assert logs.new_request_id(hostile) != hostile


@pytest.fixture
def uvicorn_logging() -> Iterator[None]:
    """Leave uvicorn's loggers and the root logger as they were."""
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error",
                                                    "uvicorn.access")]
    saved = [(lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
    yield
    for lg, (handlers, level, propagate, disabled) in zip(loggers, saved, strict=True):
        lg.handlers[:], lg.level, lg.propagate, lg.disabled = handlers, level, propagate, disabled


@pytest.mark.usefixtures("uvicorn_logging")
@pytest.mark.parametrize("kind", ["console", "json"])
def test_uvicorns_own_lines_format_under_the_shops_log_setup(
        kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``uvicorn shop.api:app``: uvicorn's formatters read ``record.args`` themselves, so
    masking must leave them in shape (and still mask what they carry)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["default"]["use_colors"] = True
    uvicorn.Config("shop.api:app", log_config=config)  # configures logging as uvicorn does
    logs.configure(kind)  # as create_app does
    error, access = logging.getLogger("uvicorn.error"), logging.getLogger("uvicorn.access")

    error.info("Started server process [%d]", 4242,
               extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"})
    access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:50000", "POST",
                "/webhooks/stripe?to=ada.lovelace@example.com", "1.1", 500)
    try:
        raise TypeError("Object of type Decimal is not JSON serializable")
    except TypeError as exc:
        error.error("Exception in ASGI application\n", exc_info=exc)

    out, err = capsys.readouterr()
    assert "Logging error" not in err, err
    assert '"POST /webhooks/stripe?to=a***@example.com HTTP/1.1" 500' in out
    assert "Started server process [\x1b[36m4242\x1b[0m]" in err
    assert "Exception in ASGI application" in err
    assert "TypeError: Object of type Decimal" in err


def test_masking_keeps_the_arguments_a_formatter_may_read() -> None:
    logger, stream = captured("console")
    logger.warning("%s paid %d for %r", "ada.lovelace@example.com", 1500, {"to": "b@ex.com"})
    logger.warning("%(who)s paid %(amount)d", {"who": "ada.lovelace@example.com",
                                                 "amount": 1500})
    logger.warning("mailed grace.hopper@example.com")

    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("a***@example.com paid 1500 for {'to': 'b***@ex.com'}")
    assert lines[1].endswith("a***@example.com paid 1500")
    assert lines[2].endswith("mailed g***@example.com")
