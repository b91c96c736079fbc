"""The storefront and admin API's request and response bodies.

Every bound a column or the payment provider has is stated here, so it shows in the
OpenAPI schema and bad input is a 422 naming the field, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from shop.orders.refunds.views import RefundOut
from shop.payments.currencies import MAX_AMOUNT, rule_for

MAX_LINES = 100
MAX_QUANTITY = 1000
MAX_STOCK = 1_000_000_000


def _plain_text(value: str) -> str:
    """Refuse what no column can store: NUL characters and lone UTF-16 surrogates."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if any("\ud800" <= char <= "\udfff" for char in value):
        raise ValueError("must be valid Unicode text")
    return value


Text = Annotated[str, AfterValidator(_plain_text)]

# One line of text: no C0 or C1 control characters (line breaks, tabs, escapes, NUL) and
# no Unicode line or paragraph separators. Names and addresses land verbatim in the
# plain-text email and the report's CSV, where a line break starts a new header or row.
ONE_LINE = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$"
_NOT_ONE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _one_line(value: str) -> str:
    if _NOT_ONE_LINE.search(value):
        raise ValueError("must be one line of text, without line breaks or control characters")
    return value


@dataclass(frozen=True, slots=True)
class _Documented:
    """States ``pattern`` in the field's JSON schema (the validators enforce it)."""

    pattern: str

    def __get_pydantic_json_schema__(self, schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        found = handler(schema)
        found["pattern"] = self.pattern
        return found


Line = Annotated[Text, AfterValidator(_one_line), _Documented(ONE_LINE)]
Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True,
                                       pattern=r"^[A-Za-z0-9._-]+$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
PaymentMethodId = Annotated[str, StringConstraints(
    min_length=4, max_length=255, pattern=r"^pm_[A-Za-z0-9_]+$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class LineIn(Strict):
    sku: Sku
    quantity: int = Field(ge=1, le=MAX_QUANTITY, strict=True)


class AddressIn(Strict):
    line1: Line = Field(min_length=1, max_length=200)
    line2: Line | None = Field(default=None, max_length=200)
    city: Line = Field(min_length=1, max_length=100)
    postal_code: Line = Field(min_length=1, max_length=20)
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2, upper case")


class OrderIn(Strict):
    """A checkout: no prices, the server has them."""

    email: Annotated[EmailStr, AfterValidator(_plain_text)] = Field(max_length=320)
    name: Line = Field(min_length=1, max_length=200)
    lines: list[LineIn] = Field(min_length=1, max_length=MAX_LINES)
    payment_method: PaymentMethodId = Field(
        description="the payment provider's payment-method id, e.g. pm_card_visa")
    shipping_address: AddressIn

    @field_validator("lines")
    @classmethod
    def _no_repeated_sku(cls, lines: list[LineIn]) -> list[LineIn]:
        seen: set[str] = set()
        for line in lines:
            if line.sku in seen:
                raise ValueError(f"SKU {line.sku!r} appears more than once")
            seen.add(line.sku)
        return lines


class ProductOut(BaseModel):
    sku: str
    name: str
    price: int
    currency: str
    available: int


class ProductIn(Strict):
    name: Line = Field(min_length=1, max_length=200)
    price: int = Field(ge=0, le=MAX_AMOUNT, strict=True, description="minor units")
    currency: Currency = Field(description="ISO 4217, upper case, one the provider accepts")
    stock: int = Field(ge=0, le=MAX_STOCK, strict=True, description="on-hand units")

    @field_validator("currency")
    @classmethod
    def _accepted(cls, currency: str) -> str:
        if rule_for(currency) is None:
            raise ValueError(f"the payment provider does not accept {currency}")
        return currency


class LineOut(BaseModel):
    sku: str
    name: str
    quantity: int
    unit_price: int
    line_total: int


class PaymentOut(BaseModel):
    status: str
    provider: str
    reference: str | None
    client_secret: str | None = Field(
        default=None, description="only while the order is requires_action (3-D Secure)")
    amount_captured: int | None = None
    amount_refunded: int | None = None


class FailureOut(BaseModel):
    step: str
    reason: str
    message: str = Field(description="written for the customer")


class ShipmentLineOut(BaseModel):
    sku: str
    quantity: int


class ShipmentOut(BaseModel):
    id: str = Field(description="the warehouse's shipment id")
    lines: list[ShipmentLineOut]
    carrier: str
    tracking_number: str
    tracking_url: str
    shipped_at: dt.datetime
    delivered_at: dt.datetime | None


class UnfulfilledOut(BaseModel):
    sku: str
    quantity: int
    reason: str
    refunded: bool = Field(description="the refund of these units went through")


class FulfillmentOut(BaseModel):
    status: str = Field(description="requested, partially_shipped, shipped, delivered, "
                                    "cancelled or unfulfillable")
    shipments: list[ShipmentOut] = Field(default_factory=list)
    unfulfilled: list[UnfulfilledOut] = Field(default_factory=list)


class EventOut(BaseModel):
    at: dt.datetime
    type: str
    detail: dict[str, Any]


class OrderOut(BaseModel):
    id: uuid.UUID
    status: str
    email: str
    name: str
    currency: str
    subtotal: int
    total: int
    lines: list[LineOut]
    payment: PaymentOut | None
    failure: FailureOut | None
    fulfillment: FulfillmentOut | None
    events: list[EventOut]
    created_at: dt.datetime
    updated_at: dt.datetime


# --- the admin API's views ------------------------------------------------------------

class AdminFailureOut(FailureOut):
    detail: str | None = Field(default=None, description="internal: for admins only")


class AttentionOut(BaseModel):
    kind: str = Field(description="email_failed, fulfillment_failed, payment_unknown, "
                                  "release_failed, refunded_unconfirmed, dispute, refund_failed")
    message: str
    since: dt.datetime


class AdminOrderOut(BaseModel):
    id: uuid.UUID
    status: str
    stage: str
    email: str
    name: str
    currency: str
    total: int
    created_at: dt.datetime
    updated_at: dt.datetime
    failure: AdminFailureOut | None
    attention: list[AttentionOut]
    payment: PaymentOut | None
    fulfillment_status: str | None = Field(
        default=None, description="a confirmed order's fulfillment.status (None before "
                                  "its warehouse request)")


class AdminOrderPage(BaseModel):
    orders: list[AdminOrderOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class AttemptOut(BaseModel):
    attempt: int
    provider: str
    reference: str | None
    status: str
    amount: int
    amount_captured: int
    amount_refunded: int
    decline_code: str | None
    last_error: str | None
    created_at: dt.datetime


class LedgerOut(BaseModel):
    """The money of one payment attempt, in minor units of ``currency``."""

    attempt: int
    reference: str | None
    currency: str
    authorized: int = Field(description="held at the provider for this attempt at some point")
    captured: int
    refunded: int
    disputed: int = Field(description="held by an open dispute")
    held: int = Field(description="authorized and neither captured nor released yet")
    verified_at: dt.datetime | None = Field(
        description="when reconciliation last found the provider agreeing, to the cent")


class NotificationOut(BaseModel):
    kind: str
    status: str
    attempts: int
    message_id: str
    sent_at: dt.datetime | None
    last_error: str | None


class AdminEventOut(EventOut):
    internal: dict[str, Any] | None
    actor: str | None


class FulfillmentDetailOut(BaseModel):
    message_id: uuid.UUID
    status: str
    created_at: dt.datetime
    shipments: list[ShipmentOut] = Field(default_factory=list)
    unfulfilled: list[UnfulfilledOut] = Field(default_factory=list)


class WebhookOut(BaseModel):
    id: str
    type: str
    outcome: str | None
    received_at: dt.datetime


class AdminOrderDetail(AdminOrderOut):
    lines: list[LineOut]
    shipping_address: dict[str, Any]
    events: list[AdminEventOut]
    attempts: list[AttemptOut]
    ledger: list[LedgerOut]
    notifications: list[NotificationOut]
    fulfillment: FulfillmentDetailOut | None
    webhooks: list[WebhookOut]
    refunds: list[RefundOut] = Field(default_factory=list,
                                     description="line refunds, oldest first")


class ResolvedOut(BaseModel):
    id: uuid.UUID
    resolved: list[str] = Field(description="the attention kinds marked handled")


class QueuedOut(BaseModel):
    id: uuid.UUID
    status: str
    queued: str = Field(description="what was queued: retry, cancel, resend_email, …")


class BulkRetryIn(Strict):
    step: str | None = Field(default=None, pattern=r"^(inventory|payment|reservation)$")
    reason: str | None = Field(default=None, max_length=64, pattern=r"^[a-z_]+$")
    limit: int = Field(default=50, ge=1, le=500, strict=True)


class BulkRetryOut(BaseModel):
    queued: list[uuid.UUID]
