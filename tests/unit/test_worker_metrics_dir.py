"""A prefork worker serving SHOP_METRICS_PORT never serves empty figures: it gets a
PROMETHEUS_MULTIPROC_DIR of its own, or refuses to start naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from shop import celery as shop_celery
from shop.config import get_settings

PROBE = """
import os, sys
sys.argv = {argv!r}
import shop.metrics as m
print(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or "-", m.in_files())
"""


def probe(argv: list[str], **env: str) -> tuple[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("PROMETHEUS_MULTIPROC_DIR", "SHOP_METRICS_PORT")}
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], env={**clean, **env},
                         capture_output=True, text=True, timeout=60, check=True).stdout
    directory, in_files = out.split()
    return directory, in_files


WORKER = ["/srv/shop/bin/celery", "-A", "shop", "worker", "-c", "2"]


def test_a_worker_with_a_metrics_port_gets_a_directory_removed_when_it_exits() -> None:
    directory, in_files = probe(WORKER, SHOP_METRICS_PORT="9101")
    assert directory.startswith("/")
    assert in_files == "True"
    assert not Path(directory).exists()  # the worker's own, gone with it


def test_a_directory_given_is_kept_and_others_are_left_alone(tmp_path: Path) -> None:
    assert probe(WORKER, SHOP_METRICS_PORT="9101", PROMETHEUS_MULTIPROC_DIR=str(tmp_path)) == (
        str(tmp_path), "True")
    assert probe(WORKER) == ("-", "False")  # no port: nothing served, nothing to add up
    assert probe(["/srv/shop/bin/shop", "relay"], SHOP_METRICS_PORT="9101") == ("-", "False")
    assert probe(["/srv/shop/bin/uvicorn", "shop.api:app"], SHOP_METRICS_PORT="9101") == (
        "-", "False")


def test_a_prefork_worker_whose_metrics_count_in_memory_refuses_to_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_METRICS_PORT", "9101")
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit, match="PROMETHEUS_MULTIPROC_DIR"):
            shop_celery._serve_metrics(sender=SimpleNamespace(pool_cls="prefork"))
    finally:
        monkeypatch.delenv("SHOP_METRICS_PORT")
        get_settings.cache_clear()
