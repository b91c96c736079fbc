"""The contract's ``fulfillment`` object of an order: status, shipments, unfulfilled."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from shop.orders.fulfillment.models import Shipment, UnfulfilledLine
from shop.orders.models import FulfillmentRequest
from shop.orders.refunds.models import RefundRequest, RefundStatus
from shop.orders.schemas import FulfillmentOut, ShipmentLineOut, ShipmentOut, UnfulfilledOut


def shipments_out(session: Session, *, order_id: uuid.UUID) -> list[ShipmentOut]:
    shipments = session.scalars(select(Shipment).where(Shipment.order_id == order_id)
                                .order_by(Shipment.shipped_at, Shipment.id))
    return [ShipmentOut(id=s.shipment_id, carrier=s.carrier, tracking_number=s.tracking_number,
                        tracking_url=s.tracking_url, shipped_at=s.shipped_at,
                        delivered_at=s.delivered_at,
                        lines=[ShipmentLineOut(sku=x.sku, quantity=x.quantity) for x in s.lines])
            for s in shipments]


def unfulfilled_out(session: Session, *, order_id: uuid.UUID) -> list[UnfulfilledOut]:
    rows = session.scalars(select(UnfulfilledLine).where(UnfulfilledLine.order_id == order_id)
                           .order_by(UnfulfilledLine.created_at, UnfulfilledLine.sku)).all()
    keys = {row.refund_key for row in rows if row.refund_key}
    done = set(session.scalars(select(RefundRequest.idempotency_key).where(
        RefundRequest.order_id == order_id, RefundRequest.idempotency_key.in_(keys),
        RefundRequest.status == RefundStatus.SUCCEEDED))) if keys else set()
    return [UnfulfilledOut(sku=row.sku, quantity=row.quantity, reason=row.reason,
                           refunded=row.refund_key in done) for row in rows]


def fulfillment_out(session: Session, *, request: FulfillmentRequest) -> FulfillmentOut:
    return FulfillmentOut(status=request.status,
                          shipments=shipments_out(session, order_id=request.order_id),
                          unfulfilled=unfulfilled_out(session, order_id=request.order_id))


def fulfillment_of(session: Session, *, order_id: uuid.UUID) -> FulfillmentOut | None:
    request = session.scalar(select(FulfillmentRequest)
                             .where(FulfillmentRequest.order_id == order_id))
    return None if request is None else fulfillment_out(session, request=request)
