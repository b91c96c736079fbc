"""What every workflow case stands on: a fresh database and RabbitMQ vhost, the
processes the case starts (each in its own process group), and two in-process sinks
(an SMTP server and a UDP tally) that tell the bench when the last order is done.

Everything made here is undone by ``Bench.close``: processes are stopped (SIGTERM to
the group, SIGKILL after a grace), vhosts deleted and databases dropped, also on
Ctrl-C, SIGTERM and errors (``bench.__main__`` runs the cases inside try/finally and
turns SIGTERM/SIGHUP into an exception).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aiosmtpd.controller import Controller
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
WORKER_QUEUES = "intake,orders,payments,settlements,notifications,reports"
WORKER_FLAGS = ("--without-gossip", "--without-mingle")
logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd: lines per message


def rabbitmqctl(*args: str) -> None:
    """Run ``rabbitmqctl``; a few tries (it is an Erlang node start each time)."""
    for attempt in range(3):
        done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
        if done.returncode == 0:
            return
        time.sleep(1 + attempt)
    raise RuntimeError(f"rabbitmqctl {' '.join(args)}: exit {done.returncode}: "
                       f"{(done.stderr or done.stdout).strip()[-500:]}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Sink:
    """aiosmtpd handler: accepts every message and counts it."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.count += 1
        return "250 OK"


class Tally:
    """A UDP socket the bench's own tasks report to (``<kind>:<order id>``): cheap enough
    not to show in the figures, and it needs no result backend."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(512)
            except OSError:
                return
            kind, _, key = data.decode().partition(":")
            with self._lock:
                self.seen.setdefault(kind, set()).add(key)

    def count(self, kind: str) -> int:
        with self._lock:
            return len(self.seen.get(kind, ()))

    def reset(self) -> None:
        with self._lock:
            self.seen.clear()

    def close(self) -> None:
        self.sock.close()


@dataclass
class Bench:
    """The run's resources; ``close`` undoes all of them."""

    server_url: str
    broker_url: str
    work: Path
    keep_logs: bool = False
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    databases: list[str] = field(default_factory=list)
    vhosts: list[str] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)
    smtp: _Sink = field(default_factory=_Sink)
    tally: Tally = field(default_factory=Tally)
    _controller: Controller | None = None

    # -- services -------------------------------------------------------------------
    def smtp_url(self) -> str:
        if self._controller is None:
            port = free_port()
            self._controller = Controller(self.smtp, hostname="127.0.0.1", port=port)
            self._controller.start()
        return f"smtp://127.0.0.1:{self._controller.port}"

    def fresh_database(self) -> str:
        name = f"shop_bench_{uuid.uuid4().hex[:10]}"
        admin = create_engine(self.server_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        self.databases.append(name)
        return make_url(self.server_url).set(
            drivername="postgresql+psycopg", database=name).render_as_string(
            hide_password=False)

    def fresh_vhost(self) -> str:
        name = f"shop_bench_{uuid.uuid4().hex[:10]}"
        rabbitmqctl("add_vhost", name)
        self.vhosts.append(name)
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return self.broker_url.rstrip("/") + "/" + name

    # -- processes ------------------------------------------------------------------
    def start(self, name: str, *argv: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """``python argv`` in its own process group, output to ``<work>/<name>.log``."""
        log = (self.work / f"{name}.log").open("ab")
        self._logs.append(log)
        proc = subprocess.Popen([sys.executable, *argv], env=env, cwd=self.work,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_worker(self, name: str, app: str, *, env: dict[str, str], concurrency: int,
                     pool: str = "prefork", queues: str = WORKER_QUEUES) -> None:
        self.start(name, "-m", "celery", "-A", app, "worker", "-l", "warning",
                   "-n", f"{name}@%h", "-P", pool, "-c", str(concurrency), "-Q", queues,
                   *WORKER_FLAGS, env=env)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; "
                                   f"see {self.work / (name + '.log')}")

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        _signal_group(proc, signal.SIGKILL)  # a pool child left behind by its parent

    def stop_all(self) -> None:
        for name in list(self.procs):
            proc = self.procs[name]
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        for name in list(self.procs):
            self.stop(name)

    def pids(self, name: str) -> list[int]:
        """A process and its descendants (a prefork pool's children)."""
        return process_tree(self.procs[name].pid)

    def rss_mb(self, name: str) -> float:
        """Resident memory of a process and its descendants, in MB."""
        return sum(rss_kb(pid) for pid in self.pids(name)) / 1000

    # -- teardown -------------------------------------------------------------------
    def drop_case(self) -> None:
        """Stop the case's processes and drop its database and vhost."""
        self.stop_all()
        for log in self._logs:
            log.close()
        self._logs.clear()
        admin = create_engine(self.server_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            while self.databases:
                name = self.databases.pop()
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        while self.vhosts:
            rabbitmqctl("delete_vhost", self.vhosts.pop())

    def close(self) -> None:
        try:
            self.drop_case()
        finally:
            if self._controller is not None:
                self._controller.stop()
            self.tally.close()


def process_tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, ()))
    return tree


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def wait_for(check: Callable[[], bool], *, timeout: float, what: str,
             bench: Bench | None = None, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if bench is not None:
            bench.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
