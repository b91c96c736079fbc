"""``make test`` (and ``make chaos``) use the machine's PostgreSQL and RabbitMQ when they
answer on their usual ports; a ``make test`` run without them ends saying what it skipped
and why, and ``make chaos`` fails saying what it is missing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from kombu import Connection
from sqlalchemy import create_engine, text

from tests.fixtures.local_services import LOCAL, SWITCH, answers, detect, main, unusable
from tests.fixtures.ports import free_port
from tests.fixtures.services import REQUIRE, unavailable

REPO = Path(__file__).resolve().parents[2]
DETECTION = '$(BIN)/python -m tests.fixtures.local_services'


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any ``SHOP_`` variable, CI or pytest's own markers."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SHOP_", "PYTEST_")) and k not in ("CI", "PYTHONWARNINGS")}
    return {**env, **extra}


def port_only(_: str, url: str) -> str | None:
    return None if answers(url) else "nothing answers"


def test_detection_takes_a_service_that_answers_and_leaves_set_or_silent_ones_alone() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        up = f"amqp://guest:guest@127.0.0.1:{server.getsockname()[1]}//"
        down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres"
        candidates = {"UP": up, "DOWN": down, "MINE": up}
        assert detect({"MINE": "amqp://elsewhere//"}, candidates, port_only) == (
            {"UP": up}, {"DOWN": "nothing answers"})
        assert detect({SWITCH: "0"}, candidates, port_only) == ({}, {})
    assert unusable("SHOP_TEST_DATABASE_URL", down) == \
        f"nothing answers on 127.0.0.1:{urlsplit(down).port}"


def test_make_test_picks_the_machines_services_when_their_ports_answer() -> None:
    """The Makefile's own line, run by a shell with both variables unset."""
    makefile = (REPO / "Makefile").read_text()
    assert f'@eval "$$({DETECTION})"; status=0;' in makefile
    line = DETECTION.replace("$(BIN)/python", sys.executable)
    shown = subprocess.run(
        ["sh", "-c", f'eval "$({line})"; echo "$SHOP_TEST_DATABASE_URL"; '
                     'echo "$SHOP_TEST_BROKER_URL"'],
        cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=60, check=True)
    picked = dict(zip(LOCAL, shown.stdout.splitlines(), strict=True))
    usable = {var: url if unusable(var, url) is None else "" for var, url in LOCAL.items()}
    assert picked == usable, shown.stderr
    if os.environ.get("CI"):  # .ci/run has started both: make test must take them
        assert picked == LOCAL, shown.stderr
    for var in LOCAL:  # it says what it took, or why not
        assert var in shown.stderr


@pytest.mark.postgres
@pytest.mark.rabbitmq
def test_the_services_answer_as_the_suite_uses_them(pg_server_url: str,
                                                    broker_url: str) -> None:
    engine = create_engine(pg_server_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()
    with Connection(broker_url, connect_timeout=5) as conn:
        conn.ensure_connection(max_retries=1)


def run_pytest(node: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", node],
                          cwd=REPO, env=clean_env(**{SWITCH: "0"}), capture_output=True,
                          text=True, timeout=120, check=False)


def test_a_run_without_the_services_ends_saying_what_it_skipped_and_why() -> None:
    done = run_pytest(f"{Path(__file__).relative_to(REPO)}::"
                      "test_the_services_answer_as_the_suite_uses_them")
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.splitlines()[-2:]
    assert last[0] == (
        "1 test SKIPPED for want of their services: 1 without PostgreSQL "
        "(SHOP_TEST_DATABASE_URL is not set). `make test` uses 127.0.0.1:5432 and :5672 "
        "when they answer, .ci/run starts them (docs/testing.md)"), done.stdout
    assert "1 skipped" in last[1]


def test_a_run_that_skipped_nothing_says_nothing_about_services() -> None:
    done = run_pytest("tests/unit/test_settings_page.py::"
                      "test_every_setting_has_a_description_and_the_contracts_are_listed")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "for want of their services" not in done.stdout


def test_make_chaos_fails_naming_each_missing_service_instead_of_skipping() -> None:
    """Without the services, ``make chaos`` stops before pytest, saying what is missing
    (it used to skip every scenario and exit 0)."""
    makefile = (REPO / "Makefile").read_text()
    assert "-m tests.fixtures.local_services --require" in makefile
    assert "export SHOP_TEST_REQUIRE_SERVICES=1" in makefile
    done = subprocess.run(["make", "--no-print-directory", "chaos", "STATEMACHINE_EXAMPLES=0"],
                          cwd=REPO, env=clean_env(**{SWITCH: "0"}), capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode != 0, done.stdout + done.stderr
    for var in LOCAL:
        assert f"make chaos: FAILED: {var} is unset" in done.stderr, done.stderr
    assert "passed" not in done.stdout, done.stdout  # pytest never ran
    assert "skipped" not in done.stdout, done.stdout


def test_make_chaos_takes_the_machines_services_as_make_test_does(
        capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--require", "--target", "make chaos"]
    assert main(argv, environ={}, check=lambda var, url: None) == 0
    shown = capsys.readouterr()
    assert shown.out.splitlines() == [f"export {var}={url}" for var, url in LOCAL.items()]
    assert main(argv, environ={"SHOP_TEST_BROKER_URL": "amqp://mine//"},
                check=lambda var, url: "nothing answers on 127.0.0.1:5432") == 1
    shown = capsys.readouterr()
    assert shown.out == ""
    assert shown.err.splitlines() == [
        "make chaos: FAILED: SHOP_TEST_DATABASE_URL is unset and nothing answers on "
        "127.0.0.1:5432; set it, or start PostgreSQL on 127.0.0.1:5432 (user postgres)"]


def test_under_make_chaos_a_missing_service_fails_the_test(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv(REQUIRE, "1")
    with pytest.raises(pytest.fail.Exception, match="SHOP_TEST_REQUIRE_SERVICES=1"):
        unavailable("SHOP_TEST_DATABASE_URL is not set")
    monkeypatch.setenv(REQUIRE, "0")
    with pytest.raises(pytest.skip.Exception):
        unavailable("SHOP_TEST_DATABASE_URL is not set")
