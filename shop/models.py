"""Every mapped class, imported once so the metadata (and Alembic) sees them all."""

from shop.db import Base
from shop.messaging.models import OutboxMessage, TaskDelivery
from shop.notifications.models import Notification
from shop.orders.fulfillment.models import (
    Shipment,
    ShipmentLine,
    UnfulfilledLine,
    WarehouseMessage,
)
from shop.orders.models import (
    FulfillmentRequest,
    IdempotencyKey,
    Order,
    OrderEvent,
    OrderLine,
    Product,
)
from shop.orders.refunds.models import RefundRequest, RefundRequestLine
from shop.payments.models import Payment, WebhookEvent
from shop.reports.models import DailyReport

__all__ = [
    "Base",
    "DailyReport",
    "FulfillmentRequest",
    "IdempotencyKey",
    "Notification",
    "Order",
    "OrderEvent",
    "OrderLine",
    "OutboxMessage",
    "Payment",
    "Product",
    "RefundRequest",
    "RefundRequestLine",
    "Shipment",
    "ShipmentLine",
    "TaskDelivery",
    "UnfulfilledLine",
    "WarehouseMessage",
    "WebhookEvent",
]
