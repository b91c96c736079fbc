"""Attention items: one open row per order and kind."""


from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shop.orders import attention
from shop.orders.models import Attention
from tests.fixtures.outcomes import (
    placed,
)


def test_attention_flags_are_one_row_per_kind(session: Session) -> None:
    order = placed(session)
    for message in ("first", "second"):
        attention.flag(session, order_id=order.id, kind=attention.Kind.EMAIL_FAILED,
                       message=message)
        session.commit()
    rows = session.scalars(select(Attention).where(Attention.order_id == order.id)).all()
    assert [(r.kind, r.message) for r in rows] == [("email_failed", "second")]
