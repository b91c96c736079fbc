"""Test-wide setup: each test gets its own ``var/`` and settings read afresh, and a run
that skipped tests for want of PostgreSQL or RabbitMQ ends saying so."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
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
    "tests.fixtures.rabbit_cluster",
    "tests.fixtures.pg_standby",
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


SERVICES = {"SHOP_TEST_DATABASE_URL": "PostgreSQL", "SHOP_TEST_BROKER_URL": "RabbitMQ"}


def skipped_for_services(reports: list[pytest.TestReport]) -> str | None:
    """One line saying how many tests skipped for want of each service, and why."""
    counts: dict[str, int] = {}
    why: dict[str, str] = {}
    for report in reports:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        var = next((v for v in SERVICES if v in reason), None)
        if var is not None:
            counts[var] = counts.get(var, 0) + 1
            why.setdefault(var, reason.removeprefix("Skipped: "))
    if not counts:
        return None
    each = "; ".join(f"{counts[v]} without {SERVICES[v]} ({why[v]})" for v in SERVICES
                     if v in counts)
    total = sum(counts.values())
    return (f"{total} test{'s' * (total != 1)} SKIPPED for want of their services: {each}. "
            "`make test` uses 127.0.0.1:5432 and :5672 when they answer, .ci/run starts "
            "them (docs/testing.md)")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(
        terminalreporter: pytest.TerminalReporter) -> Generator[None, None, None]:
    """After the short summary, right above the final counts: what skipped and why."""
    yield
    line = skipped_for_services(terminalreporter.stats.get("skipped", []))
    if line is not None:
        terminalreporter.write_line(line, yellow=True, bold=True)
