"""Admin routes of the orders domain: the catalogue, and orders that need a person."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response

from shop.orders import attention, service
from shop.orders.admin import service as admin_service
from shop.orders.queries import OrderNotFound
from shop.orders.schemas import (
    AdminOrderDetail,
    AdminOrderPage,
    BulkRetryIn,
    BulkRetryOut,
    ProductIn,
    ProductOut,
    QueuedOut,
    ResolvedOut,
)
from shop.orders.workflow.table import TaskName
from shop.web.deps import AdminDep, SessionDep
from shop.web.errors import ADMIN_RESPONSES, ERROR_RESPONSES, Conflict, ErrorOut, NotFound

router = APIRouter(prefix="/admin", tags=["admin"],
                   responses={**ERROR_RESPONSES, **ADMIN_RESPONSES})

SkuPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
OrderPath = Annotated[uuid.UUID, Path(alias="order_id")]
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorOut, "description": "Not in a state this applies to, or busy"}}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such order"}}


@router.put("/products/{sku}", response_model=ProductOut, responses={
    200: {"description": "Updated"}, 201: {"model": ProductOut, "description": "Created"}})
def put_product(sku: SkuPath, body: ProductIn, session: SessionDep, response: Response,
                _: AdminDep) -> ProductOut:
    """Create or update a product; ``stock`` sets on-hand units."""
    product, created = service.put_product(session, sku=sku, data=body)
    response.status_code = 201 if created else 200
    return product


@router.get("/orders", response_model=AdminOrderPage)
def list_orders(
    session: SessionDep, _: AdminDep,
    status: Annotated[Literal["pending", "requires_action", "confirmed", "failed",
                              "cancelled"] | None, Query()] = None,
    step: Annotated[Literal["inventory", "payment", "reservation", "notification",
                            "fulfillment"] | None, Query()] = None,
    reason: Annotated[str | None, Query(max_length=64, pattern=r"^[a-z_]+$")] = None,
    attention: Annotated[bool, Query(description="only orders that need a person")] = False,
    stuck: Annotated[bool, Query(description="only orders not moving for 15 minutes")] = False,
    fulfillment: Annotated[Literal["requested", "partially_shipped", "shipped", "delivered",
                                   "cancelled", "unfulfillable"] | None,
                           Query(description="only confirmed orders whose fulfillment.status "
                                             "is this")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> AdminOrderPage:
    """Orders newest first, with their failure and what needs attention."""
    return admin_service.list_orders(session, status=status, step=step, reason=reason,
                                     needs_attention=attention, stuck=stuck,
                                     fulfillment=fulfillment, limit=limit, cursor=cursor)


@router.get("/orders/{order_id}", response_model=AdminOrderDetail, responses=NOT_FOUND)
def get_order(order_id: OrderPath, session: SessionDep, _: AdminDep) -> AdminOrderDetail:
    """One order with its timeline, payment attempts, notifications and fulfillment."""
    with _mapped(order_id):
        return admin_service.order_detail(session, order_id=order_id)


@router.post("/orders/retry", response_model=BulkRetryOut, status_code=202)
def retry_many(body: BulkRetryIn, session: SessionDep, actor: AdminDep) -> BulkRetryOut:
    """Retry failed orders matching ``step`` and ``reason`` (at most ``limit``)."""
    return BulkRetryOut(queued=admin_service.retry_many(
        session, step=body.step, reason=body.reason, limit=body.limit, actor=actor))


@router.post("/orders/{order_id}/retry", response_model=QueuedOut, status_code=202,
             responses={**CONFLICT, **NOT_FOUND})
def retry(order_id: OrderPath, session: SessionDep, actor: AdminDep) -> QueuedOut:
    """Resume a failed order from its failed step; never charges twice."""
    with _mapped(order_id):
        order = admin_service.retry(session, order_id=order_id, actor=actor)
    return QueuedOut(id=order.id, status=order.status, queued="retry")


@router.post("/orders/{order_id}/cancel", response_model=QueuedOut, status_code=202,
             responses={**CONFLICT, **NOT_FOUND})
def cancel(order_id: OrderPath, session: SessionDep, actor: AdminDep) -> QueuedOut:
    """Cancel an order: stock released, payment cancelled or refunded."""
    with _mapped(order_id):
        order = admin_service.cancel(session, order_id=order_id, actor=actor)
    return QueuedOut(id=order.id, status=order.status, queued="cancel")


@router.post("/orders/{order_id}/resend-email", response_model=QueuedOut, status_code=202,
             responses={**CONFLICT, **NOT_FOUND})
def resend_email(order_id: OrderPath, session: SessionDep, actor: AdminDep) -> QueuedOut:
    """Send a confirmed order's confirmation email again (once, if it never went out)."""
    with _mapped(order_id):
        order = admin_service.resend(session, order_id=order_id, actor=actor,
                                     what=TaskName.SEND_CONFIRMATION)
    return QueuedOut(id=order.id, status=order.status, queued="resend_email")


@router.post("/orders/{order_id}/request-fulfillment", response_model=QueuedOut,
             status_code=202, responses={**CONFLICT, **NOT_FOUND})
def request_fulfillment(order_id: OrderPath, session: SessionDep,
                        actor: AdminDep) -> QueuedOut:
    """Ask the warehouse again for a confirmed order whose request failed."""
    with _mapped(order_id):
        order = admin_service.resend(session, order_id=order_id, actor=actor,
                                     what=TaskName.REQUEST_FULFILLMENT)
    return QueuedOut(id=order.id, status=order.status, queued="request_fulfillment")


@router.post("/orders/{order_id}/attention/{kind}/resolve", response_model=ResolvedOut,
             responses={**CONFLICT, **NOT_FOUND})
def resolve_attention(order_id: OrderPath, kind: attention.Kind, session: SessionDep,
                      actor: AdminDep) -> ResolvedOut:
    """Mark an attention item handled (``all`` is not a kind: name the one you handled)."""
    with _mapped(order_id):
        kinds = admin_service.resolve(session, order_id=order_id, actor=actor, kind=kind)
    return ResolvedOut(id=order_id, resolved=kinds)


@contextmanager
def _mapped(order_id: uuid.UUID) -> Iterator[None]:
    """Map the use cases' refusals to HTTP errors."""
    try:
        yield
    except OrderNotFound:
        raise NotFound(f"no order {order_id}") from None
    except admin_service.OrderConflict as exc:
        raise Conflict(str(exc)) from None
