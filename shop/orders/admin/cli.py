"""``shop orders …``: the admin use cases from a terminal.

Tables are plain text with every control character shown escaped (``\\x1b``), so a
customer's name can neither hide itself nor drive the terminal; ``--json`` prints
the same views as the admin API.
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Callable
from typing import Any

from shop.db import session_scope
from shop.orders import attention
from shop.orders.admin import service as admin_service
from shop.orders.queries import OrderNotFound
from shop.orders.refunds import cli as refund_commands
from shop.orders.schemas import AdminOrderOut

ACTOR = "cli"
COLUMNS = (("id", 36), ("status", 15), ("created", 16), ("total", 14), ("step", 11),
           ("reason", 20), ("attention", 18), ("name", 24))


class CommandError(Exception):
    """A refusal to print as one line (unknown id, wrong status); exit status 1."""


def register(sub: Any) -> None:
    """Add ``orders list|show|retry|cancel|resolve|refund`` to the ``shop`` parser."""
    orders = sub.add_parser("orders", help="find, show, retry and cancel orders")
    verbs = orders.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", help="orders newest first")
    listing.add_argument("--status", choices=["pending", "requires_action", "confirmed",
                                              "failed", "cancelled"])
    listing.add_argument("--step")
    listing.add_argument("--reason")
    listing.add_argument("--attention", action="store_true", help="only those needing a person")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_guarded(_list))
    show = verbs.add_parser("show", help="one order, with its timeline")
    show.add_argument("id")
    show.set_defaults(run=_guarded(_show))
    retry = verbs.add_parser("retry", help="retry a failed order (or --all-failed)")
    retry.add_argument("id", nargs="?")
    retry.add_argument("--all-failed", action="store_true")
    retry.add_argument("--step")
    retry.add_argument("--reason")
    retry.add_argument("--limit", type=int, default=50)
    retry.set_defaults(run=_guarded(_retry))
    cancel = verbs.add_parser("cancel", help="cancel an order, releasing stock and payment")
    cancel.add_argument("id")
    cancel.set_defaults(run=_guarded(_cancel))
    resolve = verbs.add_parser("resolve", help="mark what needs attention on an order handled")
    resolve.add_argument("id")
    resolve.add_argument("--kind", choices=[kind.value for kind in attention.Kind],
                         help="only this kind of item (default: every open one)")
    resolve.set_defaults(run=_guarded(_resolve))
    refund_commands.register(verbs)


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (CommandError, admin_service.OrderConflict) as exc:
            print(f"shop orders: {exc}")
            return 1
        except OrderNotFound as exc:
            print(f"shop orders: no order {exc}")
            return 1
    return run


def _order_id(text: str | None) -> uuid.UUID:
    try:
        return uuid.UUID(str(text))
    except ValueError:
        raise CommandError(f"{shown(str(text))!r} is not an order id") from None


def _list(args: argparse.Namespace) -> int:
    with session_scope() as session:
        page = admin_service.list_orders(session, status=args.status, step=args.step,
                                         reason=args.reason, needs_attention=args.attention,
                                         limit=max(1, min(args.limit, 500)))
    if args.json:
        print(json.dumps([o.model_dump(mode="json") for o in page.orders], indent=2))
        return 0
    print(table(page.orders))
    return 0


def _show(args: argparse.Namespace) -> int:
    with session_scope() as session:
        detail = admin_service.order_detail(session, order_id=_order_id(args.id))
    print(table([detail]))
    if detail.ledger:
        print("  ledger (minor units):  attempt  reference  authorized  held  captured  "
              "refunded  disputed  provider agreed")
        for m in detail.ledger:
            agreed = f"{m.verified_at:%Y-%m-%d %H:%M:%S}" if m.verified_at else "not yet checked"
            print(f"    {m.attempt}  {shown(m.reference or '-')}  {m.currency}  "
                  f"{m.authorized}  {m.held}  {m.captured}  {m.refunded}  {m.disputed}  "
                  f"{agreed}")
    if detail.fulfillment is not None:
        print(f"  fulfillment: {detail.fulfillment.status}")
        for parcel in detail.fulfillment.shipments:
            units = ", ".join(f"{x.sku} x{x.quantity}" for x in parcel.lines)
            delivered = f"delivered {parcel.delivered_at:%Y-%m-%d %H:%M:%S}" \
                if parcel.delivered_at else "not delivered"
            print(f"    shipment {shown(parcel.id)}  {shown(units)}  {shown(parcel.carrier)} "
                  f"{shown(parcel.tracking_number)}  shipped "
                  f"{parcel.shipped_at:%Y-%m-%d %H:%M:%S}  {delivered}")
        for missing in detail.fulfillment.unfulfilled:
            refunded = "refunded" if missing.refunded else "not refunded yet"
            print(f"    cannot ship {shown(missing.sku)} x{missing.quantity}  "
                  f"{shown(missing.reason)}  {refunded}")
    for r in detail.refunds:
        lines = ", ".join(f"{x.sku} x{x.quantity}{' restock' if x.restock else ''}"
                          for x in r.lines)
        print(f"  refund {r.id}  {r.status}  {r.amount} {r.currency}  {shown(lines)}  "
              f"{shown(r.reason)}")
    for event in detail.events:
        who = f"  by {shown(event.actor)}" if event.actor else ""
        print(f"  {event.at:%Y-%m-%d %H:%M:%S}  {shown(event.type)}{who}  "
              f"{shown(json.dumps(event.detail))}")
    return 0


def _retry(args: argparse.Namespace) -> int:
    with session_scope() as session:
        if args.all_failed:
            queued = admin_service.retry_many(session, step=args.step, reason=args.reason,
                                              limit=args.limit, actor=ACTOR)
            print(f"queued {len(queued)} failed orders for retry")
            for order_id in queued:
                print(f"  {order_id}")
            return 0
        if args.id is None:
            raise CommandError("give an order id, or --all-failed")
        order = admin_service.retry(session, order_id=_order_id(args.id), actor=ACTOR)
        print(f"order {order.id} queued for retry (now {order.status})")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with session_scope() as session:
        order = admin_service.cancel(session, order_id=_order_id(args.id), actor=ACTOR)
        print(f"order {order.id} cancelled; stock released, payment being released")
    return 0


def _resolve(args: argparse.Namespace) -> int:
    kind = attention.Kind(args.kind) if args.kind else None
    with session_scope() as session:
        kinds = admin_service.resolve(session, order_id=_order_id(args.id), actor=ACTOR,
                                      kind=kind)
    print(f"order {args.id}: marked handled: {', '.join(kinds)}")
    return 0


def shown(text: str) -> str:
    """``text`` safe for a terminal: control characters (and Unicode direction marks)
    are written as escapes instead of being obeyed."""
    return "".join(c if c.isprintable() and not _directional(c)
                   else c.encode("unicode_escape").decode() for c in text)


def _directional(char: str) -> bool:
    return "\u202a" <= char <= "\u202e" or "\u2066" <= char <= "\u2069" or char in "\u200e\u200f"


def table(orders: list[AdminOrderOut] | list[Any]) -> str:
    rows = [[str(o.id), o.status, f"{o.created_at:%Y-%m-%d %H:%M}",
             f"{o.total} {o.currency}", o.failure.step if o.failure else "",
             o.failure.reason if o.failure else "", ",".join(a.kind for a in o.attention),
             shown(o.name)] for o in orders]
    lines = ["  ".join(name.ljust(width) for name, width in COLUMNS).rstrip()]
    for row in rows:
        lines.append("  ".join(_cell(value, width)
                               for value, (_, width) in zip(row, COLUMNS, strict=True)).rstrip())
    if not rows:
        lines.append("(no orders)")
    return "\n".join(lines)


def _cell(value: str, width: int) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"
