"""The admins' browser pages under ``/admin/``: server-rendered, no JavaScript.

    GET  /admin/                              today's counts; failed orders, orders that
                                              need attention, stuck orders, the latest
    GET  /admin/pages/orders/{id}             one order with its timeline
    GET  /admin/pages/orders/{id}/{action}    "are you sure?": a form that POSTs
    POST /admin/pages/orders/{id}/{action}    does it, then 303 back to the order

The actions (retry, cancel, resend-email, request-fulfillment) are the admin use
cases of ``admin_service``, which stay the authority on what applies; the pages only
choose which buttons to show. Signing in is HTTP Basic: any user name (it goes on the
timeline) and ``SHOP_ADMIN_TOKEN`` as the password. Every form carries a token and is
refused from another site's page (``shop.web.csrf``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from shop.config import Settings, get_settings
from shop.orders.admin import service as admin_service
from shop.orders.admin.html import page
from shop.orders.attention import Kind
from shop.orders.queries import OrderNotFound
from shop.orders.schemas import AdminOrderDetail, AdminOrderOut
from shop.orders.states import OrderStatus
from shop.orders.workflow.table import TaskName
from shop.web import csrf
from shop.web.deps import (
    BASIC_CHALLENGE,
    AdminBasic,
    AdminBearer,
    SessionDep,
    SettingsDep,
    admin_actor,
)
from shop.web.errors import InvalidRequest

router = APIRouter(prefix="/admin", include_in_schema=False)
HOME = "/admin/"
ORDER_PAGE = "/admin/pages/orders/{}"
IN_PROGRESS = (OrderStatus.PENDING, OrderStatus.REQUIRES_ACTION)
MAX_FORM_FIELDS = 4 + 3 * 100  # the refund form: csrf, key, reason; sku, quantity, restock


class Action(StrEnum):
    RETRY = "retry"
    CANCEL = "cancel"
    RESEND_EMAIL = "resend-email"
    REQUEST_FULFILLMENT = "request-fulfillment"
    RESOLVE = "resolve"
    REFUND = "refund"  # its own form and routes (``shop.orders.refunds.pages``)

    @property
    def label(self) -> str:
        return _TEXTS[self][0]

    @property
    def explains(self) -> str:
        """What the confirmation page says the action will do."""
        return _TEXTS[self][1]

    @property
    def applies_to(self) -> str:
        return _TEXTS[self][2]

    @property
    def done(self) -> str:
        return _TEXTS[self][3]


_TEXTS: dict[Action, tuple[str, str, str, str]] = {
    Action.RETRY: (
        "Retry",
        "The order resumes from the step that failed. The payment is never taken twice: "
        "an authorization that succeeded is used, and a new payment attempt is opened only "
        "when the last one definitely failed.",
        "Only a failed order can be retried.",
        "Retry queued: the order resumes from its failed step."),
    Action.CANCEL: (
        "Cancel",
        "The order is cancelled for good: its stock is released, and its payment is "
        "cancelled, or refunded if it was already taken.",
        "The order is already cancelled.",
        "Cancelled: stock released, the payment is being cancelled or refunded."),
    Action.RESEND_EMAIL: (
        "Resend email",
        "The confirmation email is sent to the customer again. The email ledger keeps it "
        "to one: if it did go out after all, nothing more is sent.",
        "Only a confirmed order whose confirmation email failed for good.",
        "Confirmation email queued."),
    Action.REQUEST_FULFILLMENT: (
        "Request fulfillment",
        "The warehouse is asked again to ship this order. A request that was already "
        "recorded is not made twice: the warehouse sees one message id per order.",
        "Only a confirmed order whose fulfillment request failed for good.",
        "Fulfillment request queued."),
    Action.RESOLVE: (
        "Mark handled",
        "Every item under Needs attention is marked handled by you, and the timeline says "
        "so. Nothing else changes: no money moves and no message is sent. Use it once you "
        "have dealt with what the items say.",
        "Only an order with something under Needs attention.",
        "Marked handled."),
    Action.REFUND: (
        "Refund lines",
        "Chosen units of the order's lines are refunded at their unit price, once; each "
        "line says whether its units go back on the shelf.",
        "Only an order with captured money that is not all refunded.",
        "Refund queued: the money goes back once, and restocked units return to the shelf."),
}
_RESENDS = {Action.RESEND_EMAIL: TaskName.SEND_CONFIRMATION,
            Action.REQUEST_FULFILLMENT: TaskName.REQUEST_FULFILLMENT}


def available(order: AdminOrderOut) -> list[Action]:
    """The buttons an order shows (the use cases still refuse what no longer applies)."""
    kinds = {item.kind for item in order.attention}
    confirmed = order.status == OrderStatus.CONFIRMED
    shown = {
        Action.RETRY: order.status == OrderStatus.FAILED,
        Action.RESEND_EMAIL: confirmed and Kind.EMAIL_FAILED in kinds,
        Action.REQUEST_FULFILLMENT: confirmed and Kind.FULFILLMENT_FAILED in kinds,
        Action.RESOLVE: bool(kinds),
        Action.CANCEL: order.status != OrderStatus.CANCELLED,
        Action.REFUND: order.payment is not None and bool(order.payment.amount_captured)
        and (order.payment.amount_refunded or 0) < (order.payment.amount_captured or 0),
    }
    return [action for action, show in shown.items() if show]


# --- errors as pages, and signing in ----------------------------------------------------

class PageError(Exception):
    """A refusal shown as a page (the API's errors are JSON)."""

    def __init__(self, status: int, title: str, message: str, *, back: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message
        self.back, self.headers = back, headers


async def _page_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    return page("error.html", status=exc.status, headers=exc.headers, actor=None,
                title=exc.title, message=exc.message, back=exc.back)


def install(app: FastAPI) -> None:
    """Serve the pages, with their errors as pages."""
    app.include_router(router)
    app.add_exception_handler(PageError, _page_error)


_SIGN_IN = {
    401: ("Sign in", "These pages need the admin token: sign in with any user name and "
                     "SHOP_ADMIN_TOKEN as the password."),
    503: ("Admin pages are closed", "SHOP_ADMIN_TOKEN is not set, so the admin pages and "
                                    "API are closed. Set it (16 characters or more) and "
                                    "restart the API."),
}


def _signed_in(settings: SettingsDep, bearer: AdminBearer, basic: AdminBasic) -> str:
    """The acting admin; a 401 asks the browser for Basic credentials."""
    try:
        return admin_actor(settings, bearer, basic, challenge=BASIC_CHALLENGE)
    except HTTPException as exc:
        title, message = _SIGN_IN.get(exc.status_code, ("Refused", str(exc.detail)))
        raise PageError(exc.status_code, title, message,
                        headers=dict(exc.headers or {})) from None


SignedIn = Annotated[str, Depends(_signed_in)]


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (first value of each); empty for anything else."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return {}
    try:
        fields = parse_qs((await request.body()).decode("utf-8", "replace"),
                          max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        return {}
    return {name: values[0] for name, values in fields.items()}


FormDep = Annotated[dict[str, str], Depends(_form)]


# --- the pages -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Section:
    key: str
    title: str
    hint: str
    orders: list[AdminOrderOut]
    more: str | None  # the cursor of the next page


_SECTIONS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "failed": ("Failed", "Stopped: no money kept, no stock held. Retry resumes from the "
                         "failed step.", {"status": OrderStatus.FAILED}),
    "attention": ("Needs attention", "Something a person must look at: an email or a "
                                     "warehouse request that failed for good, a refund or "
                                     "void that did not go through, a dispute.",
                  {"needs_attention": True}),
    "stuck": ("Stuck", f"Pending or waiting for the customer, and not moving for "
                       f"{admin_service.STUCK_AFTER.seconds // 60} minutes.", {"stuck": True}),
    "latest": ("Latest", "Every order, newest first.", {}),
}


@router.get("/", response_class=HTMLResponse)
def dashboard(session: SessionDep, actor: SignedIn, section: str | None = None,
              cursor: str | None = None) -> HTMLResponse:
    """Today's counts, then each list (or one list, a page at a time)."""
    keys = [section] if section in _SECTIONS else list(_SECTIONS)
    one = len(keys) == 1
    sections = [_section(session, key, limit=50 if one else 20, cursor=cursor if one else None)
                for key in keys]
    since = local_midnight()
    return page("dashboard.html", actor=actor, sections=sections, one=one, today=since,
                counts=admin_service.counts_today(session, since=since), available=available)


@router.get("/pages/orders/{order_id}", response_class=HTMLResponse)
def order_page(order_id: str, session: SessionDep, actor: SignedIn,
               done: str | None = None) -> HTMLResponse:
    """One order: what went wrong, what needs a person, its payments and its timeline."""
    order = _detail(session, order_id)
    finished = Action(done).done if done in set(Action) else None
    return page("order.html", actor=actor, order=order, actions=available(order),
                done=finished, refresh=finished is not None and order.status in IN_PROGRESS)


@router.get("/pages/orders/{order_id}/{action}", response_class=HTMLResponse)
def confirm_page(order_id: str, action: str, session: SessionDep, actor: SignedIn,
                 settings: SettingsDep) -> HTMLResponse:
    """Ask before acting: the form that POSTs, with its token."""
    wanted = _action(action)
    order = _detail(session, order_id)
    back = ORDER_PAGE.format(order.id)
    if wanted not in available(order):
        raise PageError(409, f"{wanted.label}: does not apply",
                        f"{wanted.applies_to} This order is {order.status}.", back=back)
    token = csrf.form_token(_secret(settings), purpose=_purpose(wanted, order.id))
    return page("confirm.html", actor=actor, order=order, action=wanted, token=token,
                back=back)


@router.post("/pages/orders/{order_id}/{action}")
def act(order_id: str, action: str, request: Request, session: SessionDep, actor: SignedIn,
        settings: SettingsDep, form: FormDep) -> RedirectResponse:
    """Do a confirmed action, then back to the order (post, redirect, get)."""
    wanted = _action(action)
    target = _uuid(order_id)
    back = ORDER_PAGE.format(target)
    if not csrf.same_origin(request.headers):
        raise PageError(403, "Refused", "This form was sent from another site's page. "
                                        "Nothing was done.", back=back)
    if not csrf.valid_token(_secret(settings), form.get("csrf", ""),
                            purpose=_purpose(wanted, target)):
        raise PageError(403, "This form has expired",
                        "Its security token is missing, wrong or too old. Nothing was done: "
                        "go back to the order and try again.", back=back)
    try:
        _perform(session, wanted, order_id=target, actor=actor)
    except OrderNotFound:
        raise PageError(404, "No such order", f"There is no order {target}.") from None
    except admin_service.OrderConflict as exc:
        raise PageError(409, f"{wanted.label}: not done", f"{exc}. Nothing was done.",
                        back=back) from None
    return RedirectResponse(f"{back}?done={wanted.value}", status_code=303)


# --- helpers ---------------------------------------------------------------------------

def local_midnight(now: dt.datetime | None = None) -> dt.datetime:
    """The start of the shop's local day (``SHOP_TIMEZONE``)."""
    tz = get_settings().tz
    today = (now or dt.datetime.now(tz)).astimezone(tz).date()
    return dt.datetime.combine(today, dt.time(), tzinfo=tz)


def _section(session: Session, key: str, *, limit: int, cursor: str | None) -> Section:
    title, hint, filters = _SECTIONS[key]
    try:
        found = admin_service.list_orders(session, limit=limit, cursor=cursor, **filters)
    except InvalidRequest:
        raise PageError(400, "Not a page of orders", "That link's cursor is not one these "
                                                     "pages gave out.", back=HOME) from None
    return Section(key=key, title=title, hint=hint, orders=found.orders,
                   more=found.next_cursor)


def _perform(session: Session, action: Action, *, order_id: uuid.UUID, actor: str) -> None:
    if action is Action.RETRY:
        admin_service.retry(session, order_id=order_id, actor=actor)
    elif action is Action.CANCEL:
        admin_service.cancel(session, order_id=order_id, actor=actor)
    elif action is Action.RESOLVE:
        admin_service.resolve(session, order_id=order_id, actor=actor)
    else:
        admin_service.resend(session, order_id=order_id, actor=actor, what=_RESENDS[action])


def _detail(session: Session, order_id: str) -> AdminOrderDetail:
    target = _uuid(order_id)
    try:
        return admin_service.order_detail(session, order_id=target)
    except OrderNotFound:
        raise PageError(404, "No such order", f"There is no order {target}.",
                        back=HOME) from None


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise PageError(404, "No such order", "That is not an order id.", back=HOME) from None


def _action(text: str) -> Action:
    if text not in set(Action):
        raise PageError(404, "No such action", "Orders can be retried, cancelled, have "
                                               "their email or warehouse request sent again, "
                                               "or be marked handled.",
                        back=HOME)
    return Action(text)


def _purpose(action: Action, order_id: uuid.UUID) -> str:
    """What a form's token is good for: this action on this order, nothing else."""
    return f"{action.value}:{order_id}"


def _secret(settings: Settings) -> str:
    assert settings.admin_token is not None  # signed in: the token is set
    return settings.admin_token.get_secret_value()
