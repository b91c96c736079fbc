"""A shop on a cluster: a database that goes away (a dropped connection, a failover to
the standby) is told from a bad statement, a step is retried without counting a
failure, a commit that must land is tried again until the database is back, and a
broker URL that lists every node is shown without any password."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
import psycopg.errors
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from shop.config import Settings, redact_url
from shop.db import commit_surely, is_disconnect
from shop.messaging import runner
from tests.unit.test_tasks import FakeTask, Request, Retried

GONE = OperationalError("COMMIT", {}, psycopg.OperationalError(
    "server closed the connection unexpectedly"))
NO_WRITABLE_SERVER = OperationalError(None, None, psycopg.OperationalError(
    "connection failed: connection to server at \"127.0.0.1\", port 5433 failed: "
    "session is read-only"))


@pytest.mark.parametrize(("exc", "gone"), [
    (GONE, True),
    (NO_WRITABLE_SERVER, True),
    (OperationalError("SELECT 1", {}, psycopg.errors.AdminShutdown("terminating")), True),
    (OperationalError("SELECT 1", {}, psycopg.errors.CannotConnectNow("starting up")), True),
    (OperationalError("SELECT 1", {}, ValueError("x"), connection_invalidated=True), True),
    (psycopg.OperationalError("connection refused"), True),
    (OperationalError("UPDATE", {}, psycopg.errors.DeadlockDetected("deadlock")), False),
    (OperationalError("UPDATE", {}, psycopg.errors.QueryCanceled("timeout")), False),
    (IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("dup")), False),
    (OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked")), False),
    (ValueError("no"), False),
])
def test_a_database_that_went_away_is_told_from_a_bad_statement(exc: BaseException,
                                                                 gone: bool) -> None:
    assert is_disconnect(exc) is gone


class Session:
    """Stands in for a session whose first commits find the database gone."""

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.calls: list[str] = []

    def commit(self) -> None:
        self.calls.append("commit")
        if self.failures:
            raise self.failures.pop(0)

    def rollback(self) -> None:
        self.calls.append("rollback")


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shop.db.time.sleep", lambda _: None)


def test_a_commit_that_must_land_is_tried_again_until_the_database_is_back() -> None:
    session = Session([GONE, NO_WRITABLE_SERVER])
    writes: list[int] = []
    commit_surely(session, lambda: writes.append(1))  # type: ignore[arg-type]
    assert len(writes) == 3
    assert session.calls == ["commit", "rollback", "commit", "rollback", "commit"]


def test_a_bad_statement_is_not_tried_again() -> None:
    duplicate = IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("dup"))
    session = Session([duplicate])
    with pytest.raises(IntegrityError):
        commit_surely(session, lambda: None)  # type: ignore[arg-type]
    assert session.calls == ["commit", "rollback"]


def test_a_database_gone_for_longer_than_the_patience_fails_the_commit() -> None:
    session = Session([GONE] * 100)
    with pytest.raises(OperationalError):
        commit_surely(session, lambda: None, patience=0)  # type: ignore[arg-type]
    assert session.calls == ["commit", "rollback"]


def test_a_step_that_loses_the_database_is_retried_without_counting_a_failure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "mark_consumed", lambda *_a, **_k: None)
    counted: list[str] = []
    monkeypatch.setattr(runner, "_count", lambda _t, key: counted.append(key) or 1)

    def commit_lost(_: Any) -> None:
        raise GONE

    for retries in (0, 4, 40):  # however long the failover: never given up for it
        with pytest.raises(Retried):
            runner.run_step(FakeTask(request=Request(retries=retries)),  # type: ignore[arg-type]
                            commit_lost, lambda *_: pytest.fail("must not give up"))
    assert counted == []


def test_a_cluster_broker_url_is_shown_without_any_nodes_password() -> None:
    url = ("amqp://shop:s3cret@rabbit1:5672/shop;amqp://shop:s3cret@rabbit2:5672/shop;"
           "amqp://shop:s3cret@rabbit3:5672/shop")
    shown = redact_url(url)
    assert "s3cret" not in shown
    assert shown.split(";") == [f"amqp://shop:***@rabbit{n}:5672/shop" for n in (1, 2, 3)]
    assert Settings(broker_url=url).broker_is_amqp
    multi_host = ("postgresql+psycopg://shop:s3cret@/shop?host=db1:5432&host=db2:5432"
                  "&target_session_attrs=read-write")
    assert "s3cret" not in redact_url(multi_host)
