"""The chaos suite's fixtures, its opt-in, and the table printed at the end.

``make chaos`` runs every scenario (``pytest tests/chaos -m chaos``). A plain
``pytest`` leaves the ``chaos`` scenarios out and runs only the ``chaos_smoke``
subset, so CI guards the promises on every change.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.chaos.rig import RESULTS, Result, Rig, with_port
from tests.fixtures import localstripe
from tests.fixtures.api import free_port
from tests.fixtures.proxy import Forwarder
from tests.fixtures.rabbit_cluster import RabbitCluster
from tests.fixtures.smtp import SmtpServer
from tests.fixtures.stack import COMMON, bind_warehouse_queue, build_stack

REPORT = Path(os.environ.get("SHOP_CHAOS_REPORT", "var/chaos-results.md"))
COLUMNS = ("scenario", "orders", "faults", "lost", "double-charged", "oversold",
           "duplicate emails", "duplicate fulfillment", "dead letters", "settle s", "outcome")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("markexpr"):
        return
    kept = [i for i in items if i.get_closest_marker("chaos") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


def table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for r in results:
        cells = (r.scenario, r.orders, r.faults, r.lost, r.double_charged, r.oversold,
                 r.duplicate_emails, r.duplicate_fulfillment, r.dead_letters,
                 r.settle_seconds, r.outcome)
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not RESULTS:
        return
    text = table(RESULTS)
    notes = "\n".join(f"- {r.scenario}: {'; '.join(r.notes + r.problems)}"
                      for r in RESULTS if r.notes or r.problems)
    terminalreporter.write_sep("=", "chaos results")
    terminalreporter.write_line(text)
    if notes:
        terminalreporter.write_line(notes)
    report = REPORT if REPORT.is_absolute() else config.rootpath / REPORT
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text + "\n\n" + notes + "\n")
    terminalreporter.write_line(f"(written to {report})")


@contextmanager
def rigs(*, database: Callable[[], str], broker_url: str, proxy_target: tuple[str, int],
         smtp_server: SmtpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
         warehouse_arguments: dict[str, Any] | None = None) -> Iterator[Callable[..., Rig]]:
    """Rigs on ``broker_url`` (one node, or a cluster's ``;``-separated list) whose
    broker proxy forwards to ``proxy_target``; ``database()`` gives the database URL
    unless a rig is given its own; everything started is stopped on the way out."""
    started = localstripe._start(tmp_path / "localstripe.log")
    assert started is not None, "localstripe did not start"
    stripe_process, stripe_url = started
    target = urlsplit(stripe_url)
    stripe_proxy = Forwarder(free_port(), (str(target.hostname), int(target.port or 80)))
    stripe_proxy.start()
    broker_proxy = Forwarder(free_port(), proxy_target)
    made: list[Rig] = []

    def make(scenario: str, *, broker_proxy_for_all: bool = False,
             workers_via_proxy: bool = False, env: dict[str, str] | None = None,
             database_url: str | None = None,
             worker_urls: list[str | None] | None = None) -> Rig:
        if broker_proxy_for_all or workers_via_proxy:
            broker_proxy.start()
        stack = build_stack({
            "SHOP_DATABASE_URL": database_url or database(),
            "SHOP_BROKER_URL": (with_port(broker_url, broker_proxy.port)
                                if broker_proxy_for_all else broker_url),
            "SHOP_PAYMENT_PROVIDER": "stripe", "SHOP_STRIPE_API_KEY": localstripe.API_KEY,
            "SHOP_STRIPE_API_BASE": f"http://127.0.0.1:{stripe_proxy.port}",
            "SHOP_SMTP_URL": smtp_server.url, **COMMON,
            "SHOP_STUCK_AFTER_SECONDS": "60", "SHOP_DB_POOL_SIZE": "10",
            **(env or {}),
        }, tmp_path=tmp_path, monkeypatch=monkeypatch)
        rig = Rig(scenario=scenario, stack=stack, broker_url=broker_url, smtp=smtp_server,
                  stripe_url=stripe_url, stripe_proxy=stripe_proxy,
                  broker_proxy=broker_proxy if broker_proxy_for_all or workers_via_proxy
                  else None,
                  warehouse_queue=bind_warehouse_queue(broker_url, warehouse_arguments),
                  tmp_path=tmp_path, worker_urls=worker_urls)
        made.append(rig)
        rig.start()
        return rig

    try:
        yield make
    finally:
        for rig in made:
            rig.stack.stop_all()
        broker_proxy.stop()
        stripe_proxy.stop()
        localstripe._stop(stripe_process)


@pytest.fixture
def chaos(pg_url: str, vhost_url: str, smtp_server: SmtpServer, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Rig]]:
    """Build and start the rig for one scenario: ``chaos("name", broker_proxy=True)``."""
    broker = urlsplit(vhost_url)
    with rigs(database=lambda: pg_url, broker_url=vhost_url,
              proxy_target=(str(broker.hostname), int(broker.port or 5672)),
              smtp_server=smtp_server, tmp_path=tmp_path, monkeypatch=monkeypatch) as make:
        yield make


@pytest.fixture
def cluster_chaos(rabbit_cluster: RabbitCluster, cluster_vhost: str,
                  smtp_server: SmtpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  request: pytest.FixtureRequest) -> Iterator[Callable[..., Rig]]:
    """The same on the three-node RabbitMQ cluster (``tests/fixtures/rabbit_cluster.py``):
    every process gets the URL of all three nodes; the warehouse's queue is a quorum
    queue, as a warehouse on a cluster would declare it; the broker proxy forwards to
    the second node. The database is the test's own PostgreSQL (``pg_url``) unless a
    rig is given ``database_url``."""
    second = rabbit_cluster.nodes[1]
    with rigs(database=lambda: str(request.getfixturevalue("pg_url")),
              broker_url=rabbit_cluster.url_for(cluster_vhost),
              proxy_target=("127.0.0.1", second.port), smtp_server=smtp_server,
              tmp_path=tmp_path, monkeypatch=monkeypatch,
              warehouse_arguments={"x-queue-type": "quorum"}) as make:
        yield make
