"""Database plumbing: the declarative base, UTC timestamps, the engine and sessions.

Sessions never autocommit: a use case in a ``service.py`` commits explicitly, and
anything left uncommitted when the session closes is rolled back.

A PostgreSQL primary with a standby is reached with one multi-host URL
(``?host=a:5432&host=b:5432&target_session_attrs=read-write``, docs/deployment.md):
pooled connections are pinged before use, so after a failover a process reconnects to
whichever server takes writes. :func:`is_disconnect` tells such an outage from a bad
statement, and :func:`commit_surely` keeps trying a commit that must land through one.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import DateTime, Insert, MetaData, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import FunctionElement
from sqlalchemy.types import TypeDecorator

from shop.config import get_settings

log = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored with its zone and always read back as aware UTC (SQLite too)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: use timezone-aware UTC")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class db_now(FunctionElement[dt.datetime]):
    """The database's clock, plus ``seconds``: one clock for every machine.

    Leases, claims and delays compare against this instead of each worker's own
    clock, so skew between machines cannot let a second copy in early.
    """

    type = UTCDateTime()
    inherit_cache = True

    def __init__(self, seconds: float = 0) -> None:
        self.seconds = float(seconds)
        super().__init__()


@compiles(db_now, "postgresql")
def _pg_now(element: db_now, compiler: SQLCompiler, **_: Any) -> str:
    return f"(statement_timestamp() + interval '{element.seconds:.6f} seconds')"


@compiles(db_now, "sqlite")
def _sqlite_now(element: db_now, compiler: SQLCompiler, **_: Any) -> str:
    # The same text form SQLAlchemy stores (microseconds), so comparisons line up.
    return (f"(strftime('%Y-%m-%d %H:%M:%f', 'now', '{element.seconds:+.3f} seconds')"
            " || '000')")


def insert_for(session: Session, target: Table | type[Any]) -> Insert:
    """An INSERT with ``on_conflict_do_*`` for the session's database (PostgreSQL, SQLite);
    ``target`` is a table, or a mapped class (to get rows back as objects)."""
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(target)  # type: ignore[no-any-return]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # Take the write lock at BEGIN so two writers wait for each other instead of
    # failing on lock upgrade; this is what makes SQLite serialize use cases.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def build_engine(url: str | URL, *, pool_size: int = 5, max_overflow: int = 10) -> Engine:
    """An engine with the settings every process wants (pre-ping, SQLite pragmas).

    ``pool_size`` should cover the process's concurrent tasks: a worker with a threads
    pool of 16 wants ``SHOP_DB_POOL_SIZE=16`` (see docs/deployment.md).
    """
    url = make_url(url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "isolation_level": None})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size,
                         max_overflow=max_overflow)


@lru_cache
def get_engine() -> Engine:
    """The process-wide engine for ``SHOP_DATABASE_URL``."""
    settings = get_settings()
    return build_engine(settings.database_url, pool_size=settings.db_pool_size,
                        max_overflow=settings.db_max_overflow)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


def dispose_engine() -> None:
    """Drop pooled connections, e.g. in a freshly forked worker child."""
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)


def reset_engine() -> None:
    """Forget the engine (tests that change ``SHOP_DATABASE_URL``)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    get_sessionmaker.cache_clear()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that rolls back whatever the caller did not commit."""
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


# SQLSTATEs of a server that went away or will not take the session: connection
# exceptions (08), an administrator's or a crash's shutdown, a server still starting.
DISCONNECT_STATES = ("08", "57P01", "57P02", "57P03")
COMMIT_PATIENCE = 30.0  # seconds commit_surely keeps trying (a task's soft limit is 45)


def is_disconnect(exc: BaseException) -> bool:
    """Whether ``exc`` says the database went away rather than that a statement was
    wrong: a dropped connection, a server down, shutting down or starting, or no server
    that takes writes (a failover under way, with ``target_session_attrs=read-write``)."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig  # type: ignore[assignment]
    if not isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith(DISCONNECT_STATES)


def commit_surely(session: Session, write: Callable[[], object], *,
                  patience: float = COMMIT_PATIENCE) -> None:
    """``write()`` then commit; when the database goes away on the way (a dropped
    connection, a failover), roll back and do both again, for up to ``patience`` seconds.

    For the commit that records an effect outside the database (an email that left):
    if it is given up, the effect stays unrecorded and is repeated later. ``write`` must
    be safe to run twice: a commit whose answer was lost may have landed.
    """
    deadline = time.monotonic() + patience
    delay = 0.2
    while True:
        try:
            write()
            session.commit()
            return
        except DBAPIError as exc:
            session.rollback()
            if not is_disconnect(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("the database went away before a commit that must land (%s); "
                        "trying again in %.1fs", type(exc.orig).__name__, delay)
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
