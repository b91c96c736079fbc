"""``shop orders refund ID --line SKU:QTY[:restock] --reason R [--key K]``.

The admin API's rules exactly (the same body model, the same use case): a repeat with
the same ``--key`` prints the same refund; without one, the same command within a
minute is taken as a repeat too (``service.DOUBLE_CLICK_SECONDS``).
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from pydantic import ValidationError

from shop.db import session_scope
from shop.orders.queries import OrderNotFound
from shop.orders.refunds import service
from shop.orders.refunds.schemas import RefundIn
from shop.orders.refunds.views import RefundOut

ACTOR = "cli"


def register(verbs: Any) -> None:
    """Add ``orders refund`` to the ``shop orders`` parser."""
    refund = verbs.add_parser(
        "refund", help="refund lines of an order, deciding per line whether to restock",
        description="Refund units of an order's lines once; the amount is the shop's "
                    "(unit price times quantity). Add ':restock' to a line to put its "
                    "units back on the shelf.")
    refund.add_argument("id")
    refund.add_argument("--line", action="append", required=True, metavar="SKU:QTY[:restock]",
                        help="a line to refund (repeat for several)")
    refund.add_argument("--reason", required=True)
    refund.add_argument("--key", help="an idempotency key: the same key prints the same refund")
    refund.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        order_id = uuid.UUID(args.id)
    except ValueError:
        print(f"shop orders: {args.id!r} is not an order id")
        return 1
    try:
        body = RefundIn.model_validate({"lines": [_line(text) for text in args.line],
                                        "reason": args.reason})
    except (ValueError, ValidationError) as exc:
        print(f"shop orders: {_problem(exc)}")
        return 1
    lines = [service.LineRequest(sku=line.sku, quantity=line.quantity, restock=line.restock)
             for line in body.lines]
    try:
        with session_scope() as session:
            refund = RefundOut.of(service.refund_for_admin(
                session, order_id=order_id, lines=lines, reason=body.reason, key=args.key,
                actor=ACTOR))
    except OrderNotFound:
        print(f"shop orders: no order {order_id}")
        return 1
    except service.RefundError as exc:
        print(f"shop orders: {exc}")
        return 1
    print(f"refund {refund.id} of order {order_id}: {refund.amount} {refund.currency}, "
          f"{refund.status}")
    for line in refund.lines:
        restock = "restock" if line.restock else "no restock"
        print(f"  {line.sku}  {line.quantity} x {line.unit_price} = {line.amount}  {restock}")
    return 0


def _line(text: str) -> dict[str, object]:
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "restock"):
        raise ValueError(f"--line {text!r}: write SKU:QTY or SKU:QTY:restock")
    try:
        quantity = int(parts[1])
    except ValueError:
        raise ValueError(f"--line {text!r}: the quantity is not a whole number") from None
    return {"sku": parts[0], "quantity": quantity, "restock": len(parts) == 3}


def _problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        return f"{where.lstrip('.')}: {error['msg']}"
    return str(exc)
