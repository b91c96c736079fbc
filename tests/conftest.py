"""Test-wide setup: each test gets its own ``var/`` and settings read afresh."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shop.config import get_settings
from shop.db import reset_engine

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.localstripe",
    "tests.fixtures.smtp",
    "tests.fixtures.api",
    "tests.fixtures.stack",
    "tests.fixtures.outcomes",
]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test reads the developer's ``.env`` or writes to the real ``./var``."""
    for key in list(os.environ):
        if key.startswith("SHOP_") and not key.startswith("SHOP_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHOP_DATABASE_URL", f"sqlite:///{tmp_path}/shop.sqlite3")
    monkeypatch.setenv("SHOP_BROKER_URL", f"filesystem://{tmp_path}/broker")
    monkeypatch.setenv("SHOP_MAIL_DIR", str(tmp_path / "mail"))
    # In-process code leaves messages to the relay; the stacks of real processes
    # (tests/fixtures/stack.py) turn publishing on commit back on.
    monkeypatch.setenv("SHOP_PUBLISH_ON_COMMIT", "false")
    # Tests place orders in bursts from one address; the abuse tests set their own limit.
    monkeypatch.setenv("SHOP_CHECKOUT_RATE", "100000")
    monkeypatch.setenv("SHOP_CHECKOUT_BURST", "100000")
    get_settings.cache_clear()
    reset_engine()
    yield
    get_settings.cache_clear()
    reset_engine()
