"""``shop dev`` fails fast and whole: a taken port or a dead child stops everything."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.api import free_port

BIN = Path(sys.executable).parent


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _assert_group_gone(pgid: int, *, within: float = 5) -> None:
    deadline = time.monotonic() + within
    while _group_alive(pgid):
        assert time.monotonic() < deadline, "shop dev left processes behind"
        time.sleep(0.1)


def _start(args: list[str]) -> subprocess.Popen[str]:
    """Start in a process group of its own, so everything it spawns can be found."""
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen[str], *, timeout: float) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"shop dev still running after {timeout} s:\n{output}")
    return output


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_shop_dev_on_a_taken_port_exits_at_once_naming_the_port(held_port: int) -> None:
    proc = _start([str(BIN / "shop"), "dev", "--port", str(held_port)])
    try:
        output = _finish(proc, timeout=10)

        assert proc.returncode != 0, output
        assert str(held_port) in output
        assert "--port" in output
        assert "API on" not in output  # no URL that something else answers
        _assert_group_gone(proc.pid)
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_shop_dev_stops_everything_and_fails_when_a_child_dies() -> None:
    # The real commands, swapped for stand-ins: the "api" dies, the others would run on.
    script = """
import sys
import shop.cli.main as cli
sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
cli.dev_commands = lambda **_: {
    "api": [sys.executable, "-c", "import time; time.sleep(1); raise SystemExit(3)"],
    "worker": sleeper, "beat": sleeper, "relay": sleeper,
}
sys.exit(cli.main(sys.argv[1:]))
"""
    proc = _start([sys.executable, "-c", script, "dev", "--port", str(free_port())])
    try:
        output = _finish(proc, timeout=10)

        assert proc.returncode == 1, output
        assert "api exited with 3" in output
        _assert_group_gone(proc.pid)
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
