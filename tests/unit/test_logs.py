"""Log lines: the ids they carry, JSON or text, and no customer address in the clear."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
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
def test_uvicorns_own_lines_come_out_in_the_shops_format_with_the_request_id(
        kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``uvicorn shop.api:app``: uvicorn configures its loggers first, then create_app's
    ``logs.configure`` sends their lines through the shop's handler (masked, with ids,
    the traceback inside the line)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["default"]["use_colors"] = True
    uvicorn.Config("shop.api:app", log_config=config)  # configures logging as uvicorn does
    root = logging.getLogger()  # a handler an earlier test made writes to its own stderr
    root.handlers = [h for h in root.handlers if not getattr(h, "shop", False)]
    logs.configure(kind)  # as create_app does
    error, access = logging.getLogger("uvicorn.error"), logging.getLogger("uvicorn.access")

    error.info("Started server process [%d]", 4242,
               extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"})
    with logs.bound(request_id="req-uv"):
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:50000", "POST",
                    "/webhooks/stripe?to=ada.lovelace@example.com", "1.1", 500)
        try:
            raise TypeError("cannot mail ada.lovelace@example.com")
        except TypeError as exc:
            error.error("Exception in ASGI application\n", exc_info=exc)

    out, err = capsys.readouterr()
    assert out == ""
    assert "Logging error" not in err, err
    assert "ada.lovelace" not in err
    lines = err.splitlines()
    if kind == "json":
        parsed = [json.loads(line) for line in lines]
        assert [p["logger"] for p in parsed] == ["uvicorn.error", "uvicorn.access",
                                                 "uvicorn.error"]
        assert parsed[0]["message"] == "Started server process [4242]"
        assert parsed[1]["message"] == ('127.0.0.1:50000 - "POST /webhooks/stripe?'
                                        'to=a***@example.com HTTP/1.1" 500')
        assert parsed[1]["request_id"] == parsed[2]["request_id"] == "req-uv"
        assert "TypeError: cannot mail a***@example.com" in parsed[2]["error"]
    else:
        assert lines[0].endswith("uvicorn.error: Started server process [4242]")
        assert '"POST /webhooks/stripe?to=a***@example.com HTTP/1.1" 500' in lines[1]
        assert lines[1].endswith("[request_id=req-uv]")
        assert "TypeError: cannot mail a***@example.com" in err


@pytest.mark.usefixtures("uvicorn_logging")
def test_a_console_traceback_is_masked_and_a_json_one_is_a_field_of_its_line() -> None:
    for kind in ("console", "json"):
        logger, stream = captured(kind)
        try:
            raise ValueError("no mailbox for grace.hopper@example.com")
        except ValueError:
            logger.exception("mailing failed for %s", "grace.hopper@example.com")
        text = stream.getvalue()
        assert "grace.hopper" not in text
        assert "ValueError: no mailbox for g***@example.com" in text
        if kind == "json":
            (line,) = [json.loads(raw) for raw in text.splitlines()]
            assert line["message"] == "mailing failed for g***@example.com"
            assert line["error"].startswith("Traceback (most recent call last)")


@pytest.mark.usefixtures("uvicorn_logging")
def test_the_level_comes_from_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from shop.config import Settings, get_settings

    monkeypatch.setenv("SHOP_LOG_LEVEL", "warning")
    get_settings.cache_clear()
    try:
        assert get_settings().log_level == "WARNING"
        logger, stream = captured("console")
        logger.info("quiet")
        logger.warning("loud")
        assert stream.getvalue().rstrip().endswith("loud")
        assert "quiet" not in stream.getvalue()
        assert logging.getLogger("shop").level == logging.WARNING
    finally:
        get_settings.cache_clear()
        logging.getLogger("shop").setLevel(logging.INFO)
    with pytest.raises(ValueError, match="log_level"):
        Settings(log_level="LOUD")


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


def test_ids_are_masked_too_since_a_poison_message_may_fill_them_with_anything() -> None:
    for kind in ("console", "json"):
        logger, stream = captured(kind)
        with logs.bound(order_id="ada.lovelace@example.com"):
            logger.warning("bad order id")
        assert "ada.lovelace" not in stream.getvalue()
        assert "a***@example.com" in stream.getvalue()


def test_the_lines_after_a_request_raised_still_carry_its_request_id() -> None:
    """uvicorn logs the traceback and the 500's access line outside the app (in the
    request's own task): the request id stays bound for them, and only then."""
    from shop.api import RequestIds  # importing shop.api builds the app: only here

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(_: Message) -> None:
        return None

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    async def answered(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    async def after(app: ASGIApp) -> str | None:
        scope = {"type": "http", "headers": [(b"x-request-id", b"req-500")]}
        with contextlib.suppress(RuntimeError):
            await RequestIds(app)(scope, receive, send)
        return logs.REQUEST_ID.get()

    assert asyncio.run(after(broken)) == "req-500"
    assert asyncio.run(after(answered)) is None


@pytest.mark.usefixtures("uvicorn_logging")
def test_uvicorns_supervisor_writes_json_with_the_deploy_log_config(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``uvicorn --workers N --log-config deploy/systemd/uvicorn-logging.json``: the
    parent process never imports the app, so its lines need the shop's handler there."""
    from shop.config import get_settings

    monkeypatch.setenv("SHOP_LOG_FORMAT", "json")
    get_settings.cache_clear()
    try:
        uvicorn.Config("shop.api:app", log_config=str(
            Path(__file__).parents[2] / "deploy" / "systemd" / "uvicorn-logging.json"))
        logging.getLogger("uvicorn.error").info("Started parent process [%d]", 4242)
    finally:
        get_settings.cache_clear()
    line = json.loads(capsys.readouterr().err)
    assert (line["logger"], line["message"]) == ("uvicorn.error", "Started parent process [4242]")
