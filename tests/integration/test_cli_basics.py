"""The ``shop`` command itself: its version, and a bad setting as one line, never a
traceback (run as a subprocess, the way an operator meets it)."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

import pytest


def shop(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {**os.environ, **env}
    clean.pop("PYTHONWARNINGS", None)
    return subprocess.run([sys.executable, "-m", "shop.cli", *args], env=clean,
                          capture_output=True, text=True, timeout=60, check=False)


def test_version_prints_the_installed_release() -> None:
    done = shop("--version")
    assert (done.returncode, done.stdout) == (0, f"shop {version('shop')}\n")


@pytest.mark.parametrize(("command", "variable", "value", "says"), [
    ("migrate", "SHOP_LOG_FORMAT", "xml",
     "SHOP_LOG_FORMAT: Input should be 'json' or 'console' (got 'xml')"),
    ("doctor", "SHOP_DB_POOL_SIZE", "lots", "SHOP_DB_POOL_SIZE: Input should be a valid integer"),
    ("relay", "SHOP_TIMEZONE", "Mars/Olympus", "SHOP_TIMEZONE: unknown time zone"),
    ("seed", "SHOP_ADMIN_TOKEN", "too-short", "SHOP_ADMIN_TOKEN: must be at least 16 characters"),
])
def test_a_bad_setting_ends_in_one_line_on_stderr_and_exit_status_2(
        command: str, variable: str, value: str, says: str) -> None:
    done = shop(command, **{variable: value})
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("shop: configuration error: "), line
    assert says in line, line


def test_a_secret_in_a_bad_setting_is_never_echoed() -> None:
    done = shop("orders", "list", SHOP_ADMIN_TOKEN="s3cr3t", SHOP_SMTP_URL="smtp://u:pw@h",
                SHOP_DATABASE_URL="postgresql+psycopg://shop:hunter2@db/shop",
                SHOP_DB_MAX_OVERFLOW="-1")
    assert done.returncode == 2
    assert "s3cr3t" not in done.stderr
    assert "hunter2" not in done.stderr
    assert "SHOP_ADMIN_TOKEN" in done.stderr
    assert "SHOP_DB_MAX_OVERFLOW" in done.stderr
