"""The warehouse's messages (CONTRACT.md, "Messages from the warehouse"), parsed strictly.

A body is UTF-8 JSON validated in pydantic's strict mode: no coercion but JSON's own
(an ISO 8601 string with a zone for times, a string for ids), every field the contract
names required, no SKU twice in one message. Fields the contract does not name are
ignored, so the warehouse may add some. ``parse`` raises ``Invalid`` with the reason a
person reads in the dead-letter queue.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from shop.orders.schemas import MAX_STOCK

SHIPPED = "fulfillment.shipped"
CANNOT_FULFIL = "fulfillment.cannot_fulfil"
DELIVERED = "fulfillment.delivered"

PRINTABLE = r"^[^\x00-\x1f\x7f]+$"  # one line: these reach email subjects and logs
Text = Annotated[str, Field(min_length=1, max_length=255, pattern=PRINTABLE)]
Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=PRINTABLE)]


class Invalid(Exception):
    """A message the shop cannot read; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class Line(_Strict):
    sku: Sku
    quantity: int = Field(ge=1, le=1000)


class _Message(_Strict):
    message_id: Text
    order_id: uuid.UUID


class _WithLines(_Message):
    request_message_id: uuid.UUID
    lines: list[Line] = Field(min_length=1, max_length=100)

    @field_validator("lines")
    @classmethod
    def _sku_once(cls, lines: list[Line]) -> list[Line]:
        skus = [x.sku for x in lines]
        if len(set(skus)) != len(skus):
            raise ValueError("a SKU appears twice")
        return lines

    def units(self) -> dict[str, int]:
        return {x.sku: x.quantity for x in self.lines}


class Shipped(_WithLines):
    shipment_id: Text
    carrier: Annotated[str, Field(min_length=1, max_length=100, pattern=PRINTABLE)]
    tracking_number: Text
    tracking_url: Annotated[str, Field(min_length=1, max_length=2000,
                                       pattern=r"^https?://[^\s]+$")]
    shipped_at: AwareDatetime


class CannotFulfil(_WithLines):
    reason: Text
    on_hand: dict[Sku, Annotated[int, Field(ge=0, le=MAX_STOCK)]] = Field(
        default_factory=dict, max_length=100)  # what a product's stock may be (PUT)


class Delivered(_Message):
    shipment_id: Text
    delivered_at: AwareDatetime


Message = Shipped | CannotFulfil | Delivered
KINDS: dict[str, type[Shipped] | type[CannotFulfil] | type[Delivered]] = {
    SHIPPED: Shipped, CANNOT_FULFIL: CannotFulfil, DELIVERED: Delivered}


def kind_of(message: Message) -> str:
    """The routing key a message came with."""
    return next(key for key, model in KINDS.items() if isinstance(message, model))


def parse(*, routing_key: str, body: bytes, message_id: str | None) -> Message:
    """The message, or ``Invalid``: an unknown routing key, a body that is not the
    contract's, or an AMQP ``message_id`` that differs from the body's."""
    model = KINDS.get(routing_key)
    if model is None:
        raise Invalid(f"unknown routing key {routing_key!r}")
    try:
        message = model.model_validate_json(body)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                           for e in exc.errors()[:5])
        raise Invalid(f"malformed {routing_key}: {errors}"[:1000]) from None
    if message_id != message.message_id:
        raise Invalid(f"the AMQP message_id {message_id!r} is not the body's "
                      f"{message.message_id!r}")
    return message
