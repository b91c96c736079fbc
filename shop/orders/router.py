"""Storefront routes: products and orders."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Response

from shop.orders import queries, service
from shop.orders.schemas import OrderIn, OrderOut, ProductOut
from shop.web.deps import SessionDep
from shop.web.errors import ERROR_RESPONSES, ErrorOut, NotFound

router = APIRouter(prefix="/v1", tags=["storefront"], responses=ERROR_RESPONSES)
log = logging.getLogger(__name__)

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x20-\x7e]+$",
           description="Repeat a checkout safely: the same key and body give the same order "
                       "(printable ASCII, up to 255 characters)"),
]


@router.get("/products", response_model=list[ProductOut])
def list_products(session: SessionDep) -> list[ProductOut]:
    """The catalogue; ``available`` is on-hand stock minus reserved."""
    return service.list_products(session)


@router.post("/orders", status_code=202, response_model=OrderOut, responses={
    429: {"model": ErrorOut, "description": "Too many checkouts from this client: retry "
                                            "after Retry-After, with the same key"}})
def place_order(body: OrderIn, session: SessionDep, response: Response,
                idempotency_key: IdempotencyKeyHeader = None) -> OrderOut:
    """Accept an order; the workflow runs in the background."""
    order, created = service.place_order(session, data=body, idempotency_key=idempotency_key)
    log.info("order %s %s", order.id, "placed" if created else "replayed for its key",
             extra={"order_id": str(order.id)})
    response.headers["Location"] = f"/v1/orders/{order.id}"
    return service.order_view(session, order=order, new=created)


@router.get("/orders/{order_id}", response_model=OrderOut,
            responses={404: {"model": ErrorOut, "description": "No such order"}})
def get_order(order_id: uuid.UUID, session: SessionDep) -> OrderOut:
    """One order with its lines, payment, failure and timeline."""
    try:
        order = queries.require(session, order_id=order_id, lines=True, events=True)
    except queries.OrderNotFound:
        raise NotFound(f"no order {order_id}") from None
    return service.order_view(session, order=order)
