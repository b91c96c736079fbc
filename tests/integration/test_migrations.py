"""The Alembic migrations build exactly the models' schema, on SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import configparser
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateTable

from shop.config import get_settings
from shop.db import build_engine
from shop.migrate import (
    alembic_config,
    downgrade,
    pending_differences,
    upgrade,
)
from shop.models import Base, Product
from tests.factories import bound_to
from tests.factories.orders import ProductFactory

REPO = Path(__file__).resolve().parents[2]
MODEL_TABLES = set(Base.metadata.tables)
PRODUCTS = Base.metadata.tables[Product.__tablename__]


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """The shop's own engine on ``db_url`` (SQLite foreign keys on, as in production)."""
    eng = build_engine(db_url)
    yield eng
    eng.dispose()


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def test_upgrade_head_builds_exactly_the_models(db_url: str, engine: Engine) -> None:
    upgrade(db_url)

    assert pending_differences(db_url) == []
    assert table_names(engine) == MODEL_TABLES | {"alembic_version"}
    assert current_revision(engine) == head_revision()


def test_upgrade_head_creates_every_check_constraint(db_url: str, engine: Engine) -> None:
    # Autogenerate does not compare CHECK constraints, so compare their names here.
    upgrade(db_url)

    inspector = inspect(engine)
    for name, table in Base.metadata.tables.items():
        ddl = str(CreateTable(table).compile(dialect=engine.dialect))
        expected = set(re.findall(r"CONSTRAINT (\w+) CHECK", ddl))
        found = {c["name"] for c in inspector.get_check_constraints(name)}
        assert found == expected, name
    assert "ck_products_available_not_negative" in {
        c["name"] for c in inspector.get_check_constraints("products")
    }


def test_downgrade_base_drops_every_table(db_url: str, engine: Engine) -> None:
    upgrade(db_url)

    downgrade(db_url)

    assert table_names(engine) == {"alembic_version"}
    assert current_revision(engine) is None


def test_upgrade_after_downgrade_rebuilds_the_schema(db_url: str, engine: Engine) -> None:
    upgrade(db_url)
    downgrade(db_url)

    upgrade(db_url)

    assert pending_differences(db_url) == []
    assert table_names(engine) == MODEL_TABLES | {"alembic_version"}
    assert current_revision(engine) == head_revision()


def test_upgrade_twice_is_a_no_op(db_url: str, engine: Engine) -> None:
    upgrade(db_url)

    upgrade(db_url)

    assert current_revision(engine) == head_revision()


def test_alembic_ini_holds_no_database_url() -> None:
    parser = configparser.ConfigParser()
    parser.read(REPO / "alembic.ini")

    assert parser.has_section("alembic")
    assert not any(parser.has_option(section, "sqlalchemy.url") for section in parser.sections())
    assert alembic_config().get_main_option("sqlalchemy.url") is None


def test_upgrade_without_url_uses_shop_database_url(
    db_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_DATABASE_URL", db_url)
    get_settings.cache_clear()

    upgrade()

    assert table_names(engine) == MODEL_TABLES | {"alembic_version"}


def test_x_url_argument_overrides_settings(
    db_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SHOP_DATABASE_URL", f"sqlite:///{tmp_path}/not-this-one.sqlite3")
    get_settings.cache_clear()
    config = alembic_config()
    config.cmd_opts = argparse.Namespace(x=[f"url={db_url}"])

    command.upgrade(config, "head")

    assert table_names(engine) == MODEL_TABLES | {"alembic_version"}
    assert not (tmp_path / "not-this-one.sqlite3").exists()


def test_default_settings_migrate_a_sqlite_file_under_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh clone: no SHOP_DATABASE_URL and no ./var directory yet.
    monkeypatch.delenv("SHOP_DATABASE_URL")
    get_settings.cache_clear()

    upgrade()

    assert pending_differences(f"sqlite:///{tmp_path}/var/shop.sqlite3") == []


def test_alembic_command_line_reads_settings(
    db_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SHOP_DATABASE_URL", db_url)

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alembic",
            "-c",
            str(REPO / "alembic.ini"),
            "upgrade",
            "head",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "Running upgrade  -> 0001" in result.stderr
    assert table_names(engine) == MODEL_TABLES | {"alembic_version"}


def test_alembic_upgrade_head_from_the_repository_root(
    db_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a developer types in a checkout: ``alembic.ini`` and ``alembic/`` found there."""
    monkeypatch.setenv("SHOP_DATABASE_URL", db_url)

    def alembic(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(Path(sys.executable).parent / "alembic"), *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120, check=False)

    upgraded = alembic("upgrade", "head")
    current = alembic("current")

    assert upgraded.returncode == 0, upgraded.stderr
    assert "Running upgrade  -> 0001" in upgraded.stderr
    assert current.returncode == 0, current.stderr
    assert f"{head_revision()} (head)" in current.stdout
    assert current_revision(engine) == head_revision()
    assert pending_differences(db_url) == []
    assert table_names(engine) == MODEL_TABLES | {"alembic_version"}


def test_the_scripts_are_the_repository_alembic_directory() -> None:
    assert alembic_config().get_main_option("script_location") == str(REPO / "alembic")
    assert (REPO / "alembic" / "script.py.mako").is_file()
    assert not (REPO / "alembic" / "__init__.py").exists()  # it would hide the alembic library
    parser = configparser.ConfigParser()
    parser.read(REPO / "alembic.ini")
    assert parser.get("alembic", "script_location", raw=True) == "%(here)s/alembic"


@contextmanager
def factories_on(engine: Engine) -> Iterator[Session]:
    """The factories writing through a session on ``engine`` (a migrated schema)."""
    with Session(engine) as session, bound_to(session):
        yield session


@pytest.mark.parametrize(
    ("overrides", "constraint"),
    [
        ({"on_hand": 2, "reserved": 3}, "ck_products_available_not_negative"),
        # reserved <= on_hand fails as well; either refusal will do.
        ({"on_hand": -1, "reserved": 0}, "ck_products_(on_hand|available)_not_negative"),
        ({"reserved": -1}, "ck_products_reserved_not_negative"),
        ({"price": -1}, "ck_products_price_not_negative"),
    ],
)
def test_database_refuses_impossible_stock(
    db_url: str, engine: Engine, overrides: dict[str, Any], constraint: str
) -> None:
    upgrade(db_url)

    with factories_on(engine), pytest.raises(IntegrityError, match=constraint):
        ProductFactory(**overrides)


def test_database_refuses_reserving_more_than_on_hand(db_url: str, engine: Engine) -> None:
    upgrade(db_url)
    products = PRODUCTS
    with factories_on(engine):
        ProductFactory(on_hand=2)
    with engine.begin() as conn:
        conn.execute(update(products).values(reserved=2))

    with engine.begin() as conn, pytest.raises(IntegrityError, match="available_not_negative"):
        conn.execute(update(products).values(reserved=products.c.reserved + 1))

    with engine.connect() as conn:
        assert conn.execute(text("SELECT on_hand, reserved FROM products")).one() == (2, 2)
