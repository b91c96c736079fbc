"""Alembic environment: the URL comes from the shop's settings, never from alembic.ini.

Where the URL comes from, first match wins:

1. ``alembic -x url=postgresql+psycopg://...``
2. ``config.attributes["url"]``, set by ``shop.migrate.alembic_config(url)``
3. ``config.attributes["connection"]``: an open connection to run on (the caller
   owns it and its transaction)
4. ``SHOP_DATABASE_URL`` (or ``.env``) through ``shop.config.get_settings()``

Engines, comparison options and rendering come from ``shop.migrate`` so that the
``alembic`` command, ``shop migrate`` and the drift test agree.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection, make_url

from shop.config import get_settings
from shop.migrate import context_options, lock_for_migration, migration_engine

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def explicit_url() -> str | None:
    """A URL given on the command line or programmatically, if any."""
    url = context.get_x_argument(as_dictionary=True).get("url") or config.attributes.get("url")
    return str(url) if url else None


def run_migrations_offline() -> None:
    """Write the SQL to stdout instead of running it (``alembic upgrade --sql``)."""
    url = explicit_url() or get_settings().database_url
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **context_options(make_url(url).get_backend_name()),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    context.configure(connection=connection, **context_options(connection.dialect.name))
    with context.begin_transaction():
        lock_for_migration(connection)
        context.run_migrations()


def run_migrations_online() -> None:
    url = explicit_url()
    connection = config.attributes.get("connection")
    if url is None and connection is not None:
        run_on(connection)
        return
    engine = migration_engine(url or get_settings().database_url)
    try:
        with engine.connect() as conn:
            run_on(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
