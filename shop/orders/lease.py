"""The order's lease: the one serialization point for anything that decides about an
order's money or moves it while a provider call is in flight.

A lease is a short claim on the order row (``lease_owner``, ``lease_until`` on the
database's clock). Whoever holds it may call the provider outside any transaction
and then commit the outcome; everyone else gets ``OrderBusy`` and tries again
shortly. One way to take it (``claim`` or ``hold``), one way to give it back
(``release`` when committed separately, ``clear`` inside the outcome's transaction).
It runs out by itself after ``LEASE_SECONDS``, so a crashed holder never blocks an
order for long.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from shop.db import db_now
from shop.exceptions import BusyError
from shop.orders.models import Order
from shop.orders.states import Stage
from shop.payments.gateway import CALL_TIMEOUT, MAX_CALLS_PER_STEP

# A payment step's provider calls fit in its soft time limit, which is below its hard
# limit (``workflow.table``), which is below the lease: a lease never runs out under a
# live call. A unit test holds these three in order.
LEASE_SECONDS = MAX_CALLS_PER_STEP * CALL_TIMEOUT + 15


class OrderBusy(BusyError):
    """Another holder has the order's lease; try again shortly."""


def _free_for(owner: str) -> ColumnElement[bool]:
    return or_(Order.lease_until.is_(None), Order.lease_until < db_now(),
               Order.lease_owner == owner)


def claim(session: Session, *, order_id: uuid.UUID, owner: str,
          seconds: float = LEASE_SECONDS) -> None:
    """Take the order's lease (or ``OrderBusy``); committed at once."""
    taken = session.execute(
        update(Order).where(Order.id == order_id, _free_for(owner))
        .values(lease_owner=owner, lease_until=db_now(seconds))
        .execution_options(synchronize_session=False))
    session.commit()
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        raise OrderBusy(str(order_id))


def claim_at(session: Session, *, order_id: uuid.UUID, stage: Stage,
             owner: str) -> Order | None:
    """The order at ``stage`` with its lease taken, in one statement that checks the stage,
    takes the lease and reads the order (not committed: the caller's first commit carries
    it). ``None`` if the order moved on; ``OrderBusy`` if another holder has it."""
    order = session.scalars(
        update(Order).where(Order.id == order_id, Order.stage == stage, _free_for(owner))
        .values(lease_owner=owner, lease_until=db_now(LEASE_SECONDS))
        .returning(Order)
        .execution_options(populate_existing=True, synchronize_session=False)
    ).one_or_none()
    if order is None and session.scalar(select(Order.stage).where(Order.id == order_id)) == stage:
        raise OrderBusy(str(order_id))
    return order


def release(session: Session, *, order_id: uuid.UUID, owner: str) -> None:
    """Give the lease back (committed), if ``owner`` still holds it."""
    session.execute(
        update(Order).where(Order.id == order_id, Order.lease_owner == owner)
        .values(lease_owner=None, lease_until=None)
        .execution_options(synchronize_session=False))
    session.commit()


def clear(order: Order) -> None:
    """End the lease in the caller's transaction (with the outcome it commits)."""
    order.lease_owner = None
    order.lease_until = None


@contextmanager
def given_back_on_failure(session: Session, *, order_id: uuid.UUID,
                          owner: str) -> Iterator[None]:
    """Roll back and give the lease back at once if the block fails."""
    try:
        yield
    except BaseException:
        session.rollback()
        release(session, order_id=order_id, owner=owner)
        raise


@contextmanager
def hold(session: Session, *, order_id: uuid.UUID, owner: str) -> Iterator[None]:
    """Hold the order's lease for the block; given back at its end, whatever happens.

    The block normally ends the lease in its own outcome's commit (``clear``); a block
    that returns early or fails has it given back here, so nobody waits for it to run
    out.
    """
    claim(session, order_id=order_id, owner=owner)
    with given_back_on_failure(session, order_id=order_id, owner=owner):
        yield
    release(session, order_id=order_id, owner=owner)
