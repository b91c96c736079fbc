"""factory-boy factories for the shop's rows, one module per domain.

Every factory derives from :class:`ModelFactory`, whose session is the one
:func:`bound_to` holds. The ``session`` fixture binds its session for the length of
the test, so ``ProductFactory()`` writes and commits through the test's own session,
on the test's own database; the code under test sees the rows from its own sessions.
Outside a test that asks for ``session``, ``build()`` still works (no database) and
creating a row fails loudly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from factory.alchemy import SQLAlchemyModelFactory
from sqlalchemy.orm import Session

_bound: list[Session] = []


def bound_session() -> Session:
    """The session the factories write through (``Meta.sqlalchemy_session_factory``)."""
    if not _bound:
        raise RuntimeError("factories write through the `session` fixture: ask for it")
    return _bound[-1]


@contextmanager
def bound_to(session: Session) -> Iterator[Session]:
    """Make every factory write through ``session`` until the block ends."""
    _bound.append(session)
    try:
        yield session
    finally:
        _bound.pop()


class ModelFactory(SQLAlchemyModelFactory):
    """A factory whose rows are committed, as a use case would have committed them."""

    class Meta:
        abstract = True
        sqlalchemy_session_factory = bound_session
        sqlalchemy_session_persistence = "commit"
