"""What a workflow step does when its attempts run out (SQLite and PostgreSQL)."""


from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from shop.orders import lease
from shop.orders.workflow import steps
from shop.orders.workflow.table import TaskName
from tests.fakes import FakeGateway
from tests.fixtures.outcomes import (
    give_up,
    open_flags,
    placed,
    reload,
    to_reserved,
)


def test_giving_up_on_a_capture_waits_for_a_call_still_in_flight(
        session: Session, gateway: FakeGateway) -> None:
    order = placed(session)
    to_reserved(session, order.id, gateway)
    steps.lease.claim(session, order_id=order.id, owner="capture-in-flight")
    with pytest.raises(lease.OrderBusy):
        give_up(session, TaskName.CAPTURE_PAYMENT, order.id)
    assert open_flags(session, order.id) == set()
    charging = placed(session)
    steps.check_inventory(session, order_id=charging.id)
    steps.lease.claim(session, order_id=charging.id, owner="charge-in-flight")
    with pytest.raises(lease.OrderBusy):
        give_up(session, TaskName.CHARGE_PAYMENT, charging.id)
    assert reload(session, charging.id).status == "pending"
