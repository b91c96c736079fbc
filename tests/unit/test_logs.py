"""Log lines: the ids they carry, JSON or text, and no customer address in the clear."""

from __future__ import annotations

import io
import json
import logging

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
