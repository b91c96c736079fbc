"""The order's lease, on the database's clock."""


from __future__ import annotations

import datetime as dt
import sys

import pytest
from sqlalchemy.orm import Session

from shop.orders import lease
from shop.orders.workflow import steps
from tests.fixtures.outcomes import (
    placed,
)


def test_a_worker_whose_clock_runs_ahead_cannot_take_a_live_lease(
        session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    order = placed(session)
    steps.lease.claim(session, order_id=order.id, owner="first")
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    for module in [m for name, m in sys.modules.items() if name.startswith("shop")]:
        if hasattr(module, "utcnow"):  # this worker's own clock runs an hour fast
            monkeypatch.setattr(module, "utcnow", lambda: ahead)
    with pytest.raises(lease.OrderBusy):
        steps.lease.claim(session, order_id=order.id, owner="skewed")
