"""The database schema through Alembic: upgrade, downgrade, and drift checks.

The migration scripts (``env.py``, ``script.py.mako``, ``versions/``) live in
``alembic/`` at the repository root; this module holds the helpers around them.
``shop migrate`` and the tests call these; ``env.py`` takes its engine and its
comparison options from here too, so ``alembic upgrade head`` and
:func:`pending_differences` judge the schema the same way.

A wheel carries ``alembic/`` as ``shop/_alembic/`` (``setup.py`` maps it), so
``shop migrate`` works without a checkout; in a checkout (an editable install)
the scripts are read from ``alembic/`` itself. ``alembic.ini`` in the
repository root is only for the ``alembic`` command line; its
``script_location`` is ``alembic/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

import shop
from shop.models import Base


def _script_location() -> Path:
    """``shop/_alembic/`` in a wheel, else the checkout's ``alembic/`` beside ``shop/``."""
    package = Path(shop.__file__).resolve().parent
    packaged = package / "_alembic"
    checkout = package.parent / "alembic"
    if not packaged.is_dir() and (package.parent / "alembic.ini").is_file():
        return checkout
    return packaged


# env.py, script.py.mako and versions/, installed from a wheel or not.
SCRIPT_LOCATION = _script_location()

# Any constant will do; every process migrating PostgreSQL takes this lock first.
_PG_MIGRATION_LOCK = int.from_bytes(b"shop.mig", "big")


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for the packaged scripts; ``url`` overrides ``SHOP_DATABASE_URL``.

    No ``alembic.ini`` is read, so the host's logging is left alone.
    """
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url is not None:
        config.attributes["url"] = url
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Migrate the database at ``url`` (default: the settings') up to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    """Migrate the database at ``url`` (default: the settings') down to ``revision``."""
    command.downgrade(alembic_config(url), revision)


def pending_differences(url: str) -> list[Any]:
    """What autogenerate would change to make the live database match the models.

    Empty when the migrations and the models agree. Each item is one of Alembic's
    diff tuples (or a list of them for column modifications).
    """
    engine = create_engine(url, poolclass=NullPool)  # reads only: no write lock on SQLite
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts=comparison_options())
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def _sqlite_autocommit_off(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin...
    dbapi_connection.isolation_level = None


def _sqlite_begin(conn: Connection) -> None:
    # ...so that DDL runs inside one and a failed migration leaves nothing behind.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def migration_engine(url: str) -> Engine:
    """An engine for migrating ``url``; SQLite gets transactional DDL.

    SQLite foreign keys stay off here (unlike the shop's own engine): batch
    migrations drop and recreate tables, which must not cascade.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, poolclass=NullPool)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, poolclass=NullPool, connect_args={"timeout": 30})
    event.listen(engine, "connect", _sqlite_autocommit_off)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def lock_for_migration(connection: Connection) -> None:
    """Serialize concurrent migrators on PostgreSQL (released at commit)."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Write the shop's TypeDecorators as the SQLAlchemy type they wrap.

    Migrations never import ``shop``; ``UTCDateTime`` becomes
    ``sa.DateTime(timezone=True)``.
    """
    if type_ == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl_instance!r}"
    return False


def comparison_options() -> dict[str, Any]:
    """How autogenerate compares the models with a live database."""
    return {
        "target_metadata": Base.metadata,
        "compare_type": True,
        "compare_server_default": True,
        "render_item": render_item,
    }


def context_options(dialect_name: str) -> dict[str, Any]:
    """Everything ``env.py`` passes to ``context.configure`` besides the connection."""
    sqlite = dialect_name == "sqlite"
    return {
        **comparison_options(),
        "render_as_batch": sqlite,
        "transactional_ddl": True,
    }
