"""The shop's API with two bench-only routes (never part of the product):

- ``POST /bench/insert``: the reference for case 5, one row inserted and committed
  through the same app, middleware, thread pool, session factory and engine as
  ``POST /v1/orders``;
- ``POST /bench/naive-orders``: case 2's checkout, tutorial style: the order and its
  lines written with plain ORM, committed, then ``process_order.delay()``.

    uvicorn bench.app:app
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Body
from sqlalchemy import insert, select

from bench.bare import BARE
from bench.naive import process_order
from shop.api import app
from shop.orders.models import Order, OrderLine, Product
from shop.web.deps import SessionDep

JsonBody = Annotated[dict[str, Any], Body()]


@app.post("/bench/insert", status_code=202, include_in_schema=False)
def bare_insert(session: SessionDep, body: JsonBody) -> dict[str, str]:
    row_id = uuid.uuid4()
    session.execute(insert(BARE).values(id=row_id, email=str(body.get("email")), body=body))
    session.commit()
    return {"id": str(row_id)}


@app.post("/bench/naive-orders", status_code=202, include_in_schema=False)
def naive_order(session: SessionDep, body: JsonBody) -> dict[str, str]:
    skus = [line["sku"] for line in body["lines"]]
    products = {p.sku: p for p in session.scalars(select(Product).where(Product.sku.in_(skus)))}
    lines = [OrderLine(sku=line["sku"], name=products[line["sku"]].name,
                       quantity=line["quantity"], unit_price=products[line["sku"]].price,
                       line_total=products[line["sku"]].price * line["quantity"])
             for line in body["lines"]]
    total = sum(line.line_total for line in lines)
    order = Order(email=body["email"], name=body["name"], currency="USD", subtotal=total,
                  total=total, payment_method=body["payment_method"],
                  shipping_address=body["shipping_address"], lines=lines)
    session.add(order)
    session.commit()
    process_order.delay(str(order.id))
    return {"id": str(order.id)}
