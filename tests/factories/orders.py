"""Products, orders with their lines and timeline, and fulfillment requests.

    mug = ProductFactory(sku="MUG-BLUE", on_hand=10)
    order = OrderFactory(lines=[OrderLineFactory(product=mug, quantity=2)], placed=True)

An order is priced like checkout prices it: each line costs its product's price times
its quantity, and the subtotal and total are the sum of the lines. ``placed=True``
also writes the workflow's first message to the outbox in the order's transaction,
as ``place_order`` does.
"""

from __future__ import annotations

import uuid
from typing import Any

import factory
from sqlalchemy.orm import object_session

from shop.db import utcnow
from shop.orders import flow as workflow
from shop.orders.models import FulfillmentRequest, Order, OrderEvent, OrderLine, Product
from shop.orders.states import Stage
from tests.factories import ModelFactory


class ProductFactory(ModelFactory):
    class Meta:
        model = Product

    sku = factory.Sequence(lambda n: f"SKU-{n:05d}")
    name = factory.Faker("catch_phrase")
    price = factory.Faker("random_int", min=100, max=10_000)
    currency = "USD"
    on_hand = 10
    reserved = 0
    created_at = factory.LazyFunction(utcnow)
    updated_at = factory.SelfAttribute("created_at")


class OrderLineFactory(ModelFactory):
    """A line priced from its product, which is in the database.

    Lines have no life outside an order: the line itself is only built, and written
    by the ``OrderFactory`` it is given to (with its order, in one transaction).
    """

    class Meta:
        model = OrderLine
        exclude = ("product",)

    product = factory.SubFactory(ProductFactory)
    sku = factory.SelfAttribute("product.sku")
    name = factory.SelfAttribute("product.name")
    quantity = 1
    unit_price = factory.SelfAttribute("product.price")
    line_total = factory.LazyAttribute(lambda line: line.unit_price * line.quantity)

    @classmethod
    def _create(cls, model_class: type[OrderLine], *args: Any, **kwargs: Any) -> OrderLine:
        return cls._build(model_class, *args, **kwargs)


def _placed_event(order: Any) -> list[OrderEvent]:
    return [OrderEvent(type="order.placed", at=order.created_at,
                       detail={"lines": len(order.lines), "total": order.subtotal})]


class OrderFactory(ModelFactory):
    """A new order, one line by default; ``placed=True`` starts its workflow as checkout does."""

    class Meta:
        model = Order
        # Flushed, then committed after the ``placed`` hook: one transaction, as in checkout.
        sqlalchemy_session_persistence = "flush"

    id = factory.LazyFunction(uuid.uuid4)
    email = factory.Faker("email")
    name = factory.Faker("name")
    stage = Stage.PLACED
    status = factory.LazyAttribute(lambda order: Stage(order.stage).status)
    currency = "USD"
    lines = factory.List([factory.SubFactory(OrderLineFactory)])
    subtotal = factory.LazyAttribute(lambda order: sum(line.line_total for line in order.lines))
    total = factory.SelfAttribute("subtotal")
    payment_method = "pm_card_visa"
    payment_attempt = 1
    shipping_address = factory.Dict({
        "line1": factory.Faker("street_address"), "city": factory.Faker("city"),
        "postal_code": factory.Faker("postcode"), "country": "US",
    })
    created_at = factory.LazyFunction(utcnow)
    updated_at = factory.SelfAttribute("created_at")
    events = factory.LazyAttribute(_placed_event)

    @factory.post_generation
    def placed(order: Order, create: bool, extracted: bool | None, **_: Any) -> None:
        if create and extracted:
            session = object_session(order)
            assert session is not None
            workflow.start(session, order=order)

    @classmethod
    def _after_postgeneration(cls, instance: Order, create: bool,
                              results: dict[str, Any] | None = None) -> None:
        if create:
            cls._meta.sqlalchemy_session.commit()


class FulfillmentRequestFactory(ModelFactory):
    """The warehouse request of a confirmed order."""

    class Meta:
        model = FulfillmentRequest
        exclude = ("order",)

    order = factory.SubFactory(OrderFactory, stage=Stage.CONFIRMED)
    id = factory.LazyFunction(uuid.uuid4)
    order_id = factory.SelfAttribute("order.id")
    status = "requested"
    created_at = factory.LazyFunction(utcnow)
