"""The payments pool's arithmetic (``shop.payments.sizing``, ``shop sizing``): threads ≈
orders/s x calls per order x (latency + step) + half a slot's hold, with a margin."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shop.cli.main import main
from shop.config import get_settings
from shop.payments import sizing
from shop.payments.budget import HEADROOM, Limits


def test_the_ceiling_is_the_create_endpoint_live_and_the_account_in_a_sandbox() -> None:
    assert sizing.ceiling(Limits(account_rps=100, endpoint_rps=25)) == pytest.approx(
        25 * HEADROOM)  # one create per order
    assert sizing.ceiling(Limits(account_rps=25, endpoint_rps=25)) == pytest.approx(
        25 * HEADROOM / 2)  # two calls per order on the account


def test_threads_follow_rate_times_calls_times_latency() -> None:
    per_order = 2 * (0.25 + sizing.STEP_SECONDS) + sizing.SLOT_WAIT  # 0.85 s of thread per order
    assert sizing.threads(25, 250) == 32  # ceil(25 x 0.85 x 1.5 = 31.9)
    assert sizing.threads(25, 250) >= 25 * 2 * 0.25  # at least the calls in flight
    assert sizing.threads(10, 250) == pytest.approx(10 * per_order * sizing.MARGIN, abs=1)
    assert sizing.threads(25, 1000) == 89  # ceil(25 x 2.35 x 1.5 = 88.1)
    assert sizing.threads(0.1, 0) == 2
    # latency is what the pool pays for: four times the latency, about four times the threads
    assert sizing.threads(25, 1000) > 2.5 * sizing.threads(25, 250)


def test_size_never_exceeds_what_the_budget_lets_through() -> None:
    live = Limits(account_rps=100, endpoint_rps=25)
    assert sizing.size(live, latency_ms=250, orders_per_second=1000).orders_per_second == \
        pytest.approx(22.5)
    assert sizing.size(None, latency_ms=250).threads == sizing.threads(22.5, 250) == 29
    assert sizing.size(live, latency_ms=250, orders_per_second=5).threads == 7


def test_shop_sizing_prints_the_pool(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SHOP_STRIPE_MAX_RPS", "25")
    get_settings.cache_clear()
    try:
        assert main(["sizing", "--threads", "--latency-ms", "250"]) == 0
        assert capsys.readouterr().out == f"{sizing.threads(25 * HEADROOM / 2, 250)}\n"
        assert main(["sizing", "--latency-ms", "250"]) == 0
        out = capsys.readouterr().out
        assert "ceiling: 11.2 orders/s" in out
        assert "--concurrency 15" in out
    finally:
        get_settings.cache_clear()


def test_the_deploy_files_size_the_payments_pool_with_shop_sizing() -> None:
    """deploy/systemd/worker-payments.env and the Compose file carry the figure of
    `shop sizing --threads` for Stripe's live ceiling at the default latency."""
    root = Path(__file__).resolve().parents[2] / "deploy"
    wanted = sizing.size(None, latency_ms=sizing.DEFAULT_LATENCY_MS).threads
    env = dict(line.split("=", 1) for line in (root / "systemd/worker-payments.env")
               .read_text().splitlines() if line and not line.startswith("#"))
    assert int(env["WORKER_CONCURRENCY"]) == int(env["SHOP_DB_POOL_SIZE"]) == wanted
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())["services"]
    command = compose["payments-worker"]["command"]
    assert int(command[command.index("--concurrency") + 1]) == wanted
