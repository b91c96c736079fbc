"""The order page's "Refund lines" action: a form, then the admin use case.

    GET  /admin/pages/orders/{id}/refund   the order's lines: units to refund, restock?
    POST /admin/pages/orders/{id}/refund   refunds them once, then 303 back to the order

Mounted before the generic ``/admin/pages/orders/{id}/{action}`` routes. Like every
admin form it carries a CSRF token and is refused from another site's page; it also
carries a key made when the form was drawn, so sending the same form twice (a double
click, a reload) is one refund.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from shop.config import Settings
from shop.orders.admin.html import page
from shop.orders.admin.pages import (
    ORDER_PAGE,
    Action,
    FormDep,
    PageError,
    SignedIn,
    _detail,
    available,
)
from shop.orders.models import OrderLine
from shop.orders.queries import OrderNotFound
from shop.orders.refunds import service
from shop.orders.refunds.schemas import RefundIn
from shop.web import csrf
from shop.web.deps import SessionDep, SettingsDep

router = APIRouter(prefix="/admin", include_in_schema=False)
PURPOSE = "refund:{}"


@router.get("/pages/orders/{order_id}/refund", response_class=HTMLResponse)
def refund_form(order_id: str, session: SessionDep, actor: SignedIn,
                settings: SettingsDep) -> HTMLResponse:
    """Which units of which lines to refund, and whether each goes back on the shelf."""
    order = _detail(session, order_id)
    if Action.REFUND not in available(order):
        raise PageError(409, f"{Action.REFUND.label}: does not apply",
                        f"{Action.REFUND.applies_to} This order is {order.status}.",
                        back=ORDER_PAGE.format(order.id))
    return page("refund.html", actor=actor, order=order, lines=_lines(session, order.id),
                token=csrf.form_token(_secret(settings), purpose=PURPOSE.format(order.id)),
                key=uuid.uuid4().hex, back=ORDER_PAGE.format(order.id))


@router.post("/pages/orders/{order_id}/refund")
def refund(order_id: str, request: Request, session: SessionDep, actor: SignedIn,
           settings: SettingsDep, form: FormDep) -> RedirectResponse:
    """Refund the form's lines once, then back to the order (post, redirect, get)."""
    order = _detail(session, order_id)
    back = ORDER_PAGE.format(order.id)
    if not csrf.same_origin(request.headers):
        raise PageError(403, "Refused", "This form was sent from another site's page. "
                                        "Nothing was done.", back=back)
    if not csrf.valid_token(_secret(settings), form.get("csrf", ""),
                            purpose=PURPOSE.format(order.id)):
        raise PageError(403, "This form has expired",
                        "Its security token is missing, wrong or too old. Nothing was done: "
                        "go back to the order and try again.", back=back)
    body = _body(form, back=back)
    lines = [service.LineRequest(sku=line.sku, quantity=line.quantity, restock=line.restock)
             for line in body.lines]
    key = form.get("key", "")[:64] or None
    try:
        service.refund_for_admin(session, order_id=order.id, lines=lines, reason=body.reason,
                                 key=f"page:{key}" if key else None, actor=actor)
    except OrderNotFound:
        raise PageError(404, "No such order", f"There is no order {order.id}.") from None
    except service.NothingCaptured as exc:
        raise PageError(409, "Refund: not done", f"{exc}. Nothing was done.",
                        back=back) from None
    except service.RefundInvalid as exc:
        raise PageError(422, "Refund: not done", f"{_named(exc.field, body)}: {exc.message}. "
                                                 "Nothing was done.", back=back) from None
    return RedirectResponse(f"{back}?done=refund", status_code=303)


def _lines(session: Session, order_id: uuid.UUID) -> list[dict[str, Any]]:
    return [{"sku": line.sku, "name": line.name, "quantity": line.quantity,
             "unit_price": line.unit_price, "left": line.quantity - line.quantity_refunded}
            for line in session.scalars(select(OrderLine).where(OrderLine.order_id == order_id)
                                        .order_by(OrderLine.sku))]


def _body(form: dict[str, str], *, back: str) -> RefundIn:
    """The form's fields (``sku_N``, ``quantity_N``, ``restock_N``, ``reason``) checked
    by the API's own body model; a line left at 0 is not refunded."""
    lines = []
    for name, sku in sorted(form.items()):
        if not name.startswith("sku_"):
            continue
        index = name.removeprefix("sku_")
        quantity = form.get(f"quantity_{index}", "0").strip() or "0"
        if quantity == "0":
            continue
        lines.append({"sku": sku, "quantity": int(quantity) if quantity.isdigit() else -1,
                      "restock": form.get(f"restock_{index}") == "on"})
    try:
        return RefundIn.model_validate({"lines": lines, "reason": form.get("reason", "")})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = error["loc"]
        field = (f"{lines[where[1]]['sku']} quantity" if len(where) > 2
                 and isinstance(where[1], int) else str(where[0]))
        if field == "lines":
            field = "lines (give a quantity for at least one)"
        raise PageError(422, "Refund: not done", f"{field}: {error['msg']}. Nothing was done.",
                        back=back) from None


def _named(field: str, body: RefundIn) -> str:
    """``lines[0].quantity`` as the admin sees it: the line's SKU."""
    if field.startswith("lines[") and "]" in field:
        index = int(field[6:field.index("]")])
        if 0 <= index < len(body.lines):
            return f"{body.lines[index].sku} {field.rpartition('.')[2]}"
    return field


def _secret(settings: Settings) -> str:
    assert settings.admin_token is not None  # signed in: the token is set
    return settings.admin_token.get_secret_value()
