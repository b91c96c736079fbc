"""The storefront and admin API's request and response bodies."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, field_validator

Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
MAX_LINES = 100
MAX_QUANTITY = 1000


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class LineIn(Strict):
    sku: Sku
    quantity: int = Field(ge=1, le=MAX_QUANTITY, strict=True)


class AddressIn(Strict):
    line1: str = Field(min_length=1, max_length=200)
    line2: str | None = Field(default=None, max_length=200)
    city: str = Field(min_length=1, max_length=100)
    postal_code: str = Field(min_length=1, max_length=20)
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2, upper case")


class OrderIn(Strict):
    """A checkout: no prices, the server has them."""

    email: EmailStr = Field(max_length=320)
    name: str = Field(min_length=1, max_length=200)
    lines: list[LineIn] = Field(min_length=1, max_length=MAX_LINES)
    payment_method: str = Field(min_length=1, max_length=255)
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
    name: str = Field(min_length=1, max_length=200)
    price: int = Field(ge=0, strict=True, description="minor units")
    currency: Currency
    stock: int = Field(ge=0, strict=True, description="on-hand units")


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
    client_secret: str | None = None


class FailureOut(BaseModel):
    step: str
    reason: str
    message: str


class FulfillmentOut(BaseModel):
    status: str


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


class FieldError(BaseModel):
    field: str
    message: str
    type: str


class ErrorOut(BaseModel):
    """Every error the API answers has this shape."""

    error: str = Field(description="a stable code, e.g. validation_failed, not_found")
    message: str
    fields: list[FieldError] = Field(default_factory=list)
