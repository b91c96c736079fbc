"""``POST /admin/orders/{id}/refunds``: an admin's line refund, with a restock decision."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path

from shop.orders.queries import OrderNotFound
from shop.orders.refunds import service
from shop.orders.refunds.schemas import RefundIn
from shop.orders.refunds.views import RefundOut
from shop.web.deps import AdminDep, SessionDep
from shop.web.errors import (
    ADMIN_RESPONSES,
    ERROR_RESPONSES,
    Conflict,
    ErrorOut,
    FieldProblem,
    InvalidRequest,
    NotFound,
)

router = APIRouter(prefix="/admin", tags=["admin"],
                   responses={**ERROR_RESPONSES, **ADMIN_RESPONSES})

OrderPath = Annotated[uuid.UUID, Path(alias="order_id")]
AdminKeyHeader = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x20-\x7e]+$",
    description="a repeat with the same key returns the same refund")]
RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such order"},
    409: {"model": ErrorOut, "description": "The order has no captured money"}}


@router.post("/orders/{order_id}/refunds", response_model=RefundOut, status_code=202,
             responses=RESPONSES)
def refund_lines(order_id: OrderPath, body: RefundIn, session: SessionDep, actor: AdminDep,
                 idempotency_key: AdminKeyHeader = None) -> RefundOut:
    """Refund exactly these lines once; ``restock`` puts their units back on the shelf."""
    lines = [service.LineRequest(sku=line.sku, quantity=line.quantity, restock=line.restock)
             for line in body.lines]
    with mapped(order_id):
        request = service.refund_for_admin(session, order_id=order_id, lines=lines,
                                           reason=body.reason, key=idempotency_key,
                                           actor=actor)
    return RefundOut.of(request)


@contextmanager
def mapped(order_id: uuid.UUID) -> Iterator[None]:
    """The service's refusals as HTTP errors (422 naming the field, 404, 409)."""
    try:
        yield
    except OrderNotFound:
        raise NotFound(f"no order {order_id}") from None
    except service.NothingCaptured as exc:
        raise Conflict(str(exc)) from None
    except service.RefundInvalid as exc:
        raise InvalidRequest([FieldProblem(exc.field, exc.message, exc.code)]) from None
