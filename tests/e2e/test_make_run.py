"""``make run`` on a machine with no servers: SQLite, the filesystem broker and the
dummy provider, with the same worker, relay and workflow as production."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.api import free_port, order_body
from tests.fixtures.stack import group_alive

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    env["SHOP_DATA_DIR"] = str(tmp_path / "var")
    log = (tmp_path / "make-run.log").open("wb")
    proc = subprocess.Popen(["make", "run", f"DEV_ARGS=--port {port}"], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, (tmp_path / "make-run.log").read_text()
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, (tmp_path / "make-run.log").read_text()
        time.sleep(0.5)
    try:
        yield base, tmp_path, proc
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def test_make_run_takes_an_order_end_to_end_and_stops_cleanly(
        make_run: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    base, tmp_path, proc = make_run
    products = httpx.get(f"{base}/v1/products").json()
    assert len(products) == 10
    placed = httpx.post(f"{base}/v1/orders", json=order_body(),
                        headers={"Idempotency-Key": "make-run-1"})
    assert placed.status_code == 202
    order_id = placed.json()["id"]
    assert httpx.get(f"{base}{placed.headers['Location']}").json()["id"] == order_id

    deadline = time.monotonic() + 60
    while (order := httpx.get(f"{base}/v1/orders/{order_id}").json())["status"] != "confirmed":
        assert order["status"] == "pending", order
        assert time.monotonic() < deadline, (tmp_path / "make-run.log").read_text()
        time.sleep(0.2)
    assert order["payment"]["provider"] == "dummy"
    assert order["payment"]["status"] == "captured"
    deadline = time.monotonic() + 30
    while not list((tmp_path / "var" / "mail").glob("*.eml")):
        assert time.monotonic() < deadline, "no confirmation email written"
        time.sleep(0.2)
    (mail,) = (tmp_path / "var" / "mail").glob("*.eml")
    assert order_id in mail.read_text()
    output = (tmp_path / "make-run.log").read_text()
    assert "admin token" in output
    assert "emails go to" in output

    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 20
    while group_alive(proc.pid):
        assert time.monotonic() < deadline, "processes left behind after Ctrl-C"
        time.sleep(0.2)
