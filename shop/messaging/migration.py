"""Moving a deployment's queues to other arguments: classic to quorum (or back).

A queue's type and arguments are fixed when it is created, and RabbitMQ refuses to
declare a live queue with others (``PRECONDITION_FAILED``, 406). ``shop broker
migrate-queues`` (docs/deployment.md) runs ``migrate`` with the workers, relays and beat
stopped; for each queue the shop owns (``broker.owned_queues``) whose live arguments
differ from what this code declares:

1. a holding queue ``<name>.migrating`` with the new arguments takes the old queue's
   bindings, and the old queue gives them up: what is published meanwhile lands there;
2. every message waiting in the old queue is moved to the holding queue, and the old
   queue, now unbound and empty, is deleted;
3. a task queue's exchange changes type with it (``broker.task_exchange``): deleted and
   declared again, so a publish in that moment fails (its outbox row is sent again)
   instead of going nowhere;
4. the queue is declared with its new arguments and bindings, the holding queue gives
   up its bindings, its messages are moved in, and it is deleted.

A move takes messages (``basic.get``), publishes copies with the same body and
properties to exactly the target queue (the default exchange, ``mandatory``, publisher
confirms), and acknowledges the originals of a batch only once the broker confirmed
every copy in it: a failure leaves a message where it was, or in both places (a
duplicate, which every consumer of the shop tolerates), never in neither. A message
keeps its id and headers; its routing key becomes the queue's name (Celery's retries
follow it there). Every step can be repeated, so a run that stopped halfway is
finished by running it again.

``live_arguments`` reads a queue's arguments over AMQP alone (no management plugin): it
declares the queue with a guess, and each refusal names one argument that differs and
its live value, until the guess is equivalent (a no-op declare).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqp.basic_message import Message  # type: ignore[import-untyped]
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.transport.native_delayed_delivery import MAX_LEVEL, level_name

from shop.config import Settings
from shop.messaging.broker import QUEUES, declare_topology, is_quorum, owned_queues

HOLDING_SUFFIX = ".migrating"
NOT_FOUND, PRECONDITION_FAILED = 404, 406
_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<key>[^']+)' for queue .*?but current is "
    r"(?:(?P<none>none)|the value '(?P<typed>.*)' of type '(?P<type>\w+)'|'(?P<plain>.*)')\s*$")
_FIELDS = {"durable", "auto_delete"}


class MigrationRefused(RuntimeError):
    """The migration cannot start: a queue to move still has consumers."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one queue: its type before (None: not declared) and after, and
    how many waiting messages moved (None: it was left alone)."""

    queue: str
    was: str | None
    now: str
    moved: int | None = None

    def line(self) -> str:
        if self.was is None:
            return f"{self.queue}: not declared yet (the workers declare it as {self.now})"
        if self.moved is None:
            return f"{self.queue}: already {self.now}"
        return f"{self.queue}: {self.was} -> {self.now}, {self.moved} waiting messages moved"


def queue_type(arguments: dict[str, Any]) -> str:
    return str(arguments.get("x-queue-type", "classic"))


def live_arguments(conn: Connection, queue: Queue) -> dict[str, Any] | None:
    """The arguments ``queue`` has on the broker now, or None when it does not exist."""
    guess = dict(getattr(queue, "queue_arguments", None) or {})
    durable, auto_delete = bool(queue.durable), bool(queue.auto_delete)
    for _ in range(64):  # each refusal settles one argument
        try:
            _declare(conn, queue.name, passive=True)
            _declare(conn, queue.name, durable=durable, auto_delete=auto_delete, arguments=guess)
            return guess
        except Exception as exc:
            code = getattr(exc, "code", None)
            if code == NOT_FOUND:
                return None
            found = _INEQUIVALENT.search(getattr(exc, "reply_text", "") or str(exc))
            if code != PRECONDITION_FAILED or found is None:
                raise
            key = found["key"]
            if key in _FIELDS:
                durable, auto_delete = ((not durable, auto_delete) if key == "durable"
                                        else (durable, not auto_delete))
            elif found["none"]:
                guess.pop(key, None)
            elif found["typed"] is not None:
                guess[key] = _typed(found["typed"], found["type"])
            else:
                guess[key] = type(guess.get(key, ""))(found["plain"])
    raise RuntimeError(f"could not read the arguments of {queue.name}")


def _typed(value: str, kind: str) -> Any:
    if kind in ("long", "signedint", "short", "byte", "unsignedbyte", "unsignedshort",
                "unsignedint", "timestamp"):
        return int(value)
    if kind == "bool":
        return value == "true"
    return value


def _declare(conn: Connection, name: str, **options: Any) -> Any:
    return _call(conn, "queue_declare", name, **options)


def consumers(conn: Connection, name: str) -> int | None:
    """How many consumers ``name`` has, or None when it does not exist."""
    try:
        return int(_declare(conn, name, passive=True).consumer_count)
    except Exception as exc:
        if getattr(exc, "code", None) != NOT_FOUND:
            raise
        return None


def plan(conn: Connection, settings: Settings) -> list[tuple[Queue, dict[str, Any] | None]]:
    """Each queue the shop owns with its live arguments (None: not declared)."""
    return [(queue, live_arguments(conn, queue)) for queue in owned_queues(settings)]


def migrate(conn: Connection, settings: Settings,
            say: Callable[[str], None] = print) -> list[Outcome]:
    """Bring every queue the shop owns to the arguments ``settings`` give it, moving
    the messages that wait in it (the module docstring); the connection must publish
    with confirms (``broker.transport_options``)."""
    want = settings.broker_queue_type
    todo: list[tuple[Queue, dict[str, Any] | None]] = []
    outcomes = []
    for queue, live in plan(conn, settings):
        holding = consumers(conn, queue.name + HOLDING_SUFFIX) is not None
        if live is None and not holding:
            outcomes.append(Outcome(queue.name, None, want))
        elif live is not None and _same(live, _arguments(queue)) and not holding:
            outcomes.append(Outcome(queue.name, queue_type(live), want))
        else:
            todo.append((queue, live))
    busy = {q.name: n for q, live in todo if live is not None
            and (n := consumers(conn, q.name) or 0) > 0}
    if busy:
        held = ", ".join(f"{name} ({n})" for name, n in busy.items())
        raise MigrationRefused(f"consumers still on {held}: stop the workers (and the "
                               "warehouse's consumers of shop.fulfillment*) first")
    delayed = _delayed_waiting(conn) if todo and not is_quorum(settings) else 0
    if delayed:
        raise MigrationRefused(f"{delayed} countdown retries still wait in Celery's delay "
                               "queues (celery_delayed_*), which classic queues do not use: "
                               "run it again once they have reached their task queues (at "
                               "most SHOP_RETRY_MAX_DELAY seconds)")
    for queue, live in todo:
        was = queue_type(live) if live is not None else want
        say(f"{queue.name}: moving from {was} to {want}")
        old = live is not None and not _same(live, _arguments(queue))
        outcomes.append(Outcome(queue.name, was, want, _migrate_one(conn, queue, old=old)))
        say(outcomes[-1].line())
    declare_topology(conn, settings)  # delayed-delivery bindings of quorum task queues
    order = [q.name for q in owned_queues(settings)]
    return sorted(outcomes, key=lambda o: order.index(o.queue))


def _delayed_waiting(conn: Connection) -> int:
    """Messages in native delayed delivery's level queues (absent ones hold none)."""
    counts = [_count(conn, level_name(level)) for level in range(MAX_LEVEL + 1)]
    return sum(counts)


def _count(conn: Connection, name: str) -> int:
    try:
        return int(_declare(conn, name, passive=True).message_count)
    except Exception as exc:
        if getattr(exc, "code", None) != NOT_FOUND:
            raise
        return 0


def _arguments(queue: Queue) -> dict[str, Any]:
    return dict(getattr(queue, "queue_arguments", None) or {})


def _same(live: dict[str, Any], target: dict[str, Any]) -> bool:
    """Equivalent as RabbitMQ sees it (an absent type is classic)."""
    def norm(args: dict[str, Any]) -> dict[str, Any]:
        return {**args, "x-queue-type": queue_type(args)}
    return norm(live) == norm(target)


def arguments_differ(live: dict[str, Any], queue: Queue) -> bool:
    """Whether a declare of ``queue`` by this code would be refused (406)."""
    return not _same(live, _arguments(queue))


def describe(live: dict[str, Any], queue: Queue) -> str:
    """How the live queue differs from ``queue``: its type first, else its arguments."""
    target = _arguments(queue)
    if queue_type(live) != queue_type(target):
        return f"a {queue_type(live)} queue, expected {queue_type(target)}"
    keys = sorted(set(live) | set(target))
    return "declared with other arguments: " + ", ".join(
        f"{key} {live.get(key, 'unset')} (expected {target.get(key, 'unset')})"
        for key in keys if live.get(key) != target.get(key))


def _bindings(queue: Queue) -> list[tuple[str, str]]:
    """The (exchange, routing key) pairs a queue of the shop has, delayed delivery's
    ``#.<key>`` included for task queues."""
    exchange, key = queue.exchange.name, str(queue.routing_key)
    return [(exchange, key), (exchange, f"#.{key}")] if queue.name in QUEUES else [
        (exchange, key)]


def _migrate_one(conn: Connection, queue: Queue, *, old: bool) -> int:
    """Steps 1 to 4 for one queue (``old``: the live queue still has other arguments;
    otherwise only a holding queue left by an earlier run is emptied into it)."""
    holding = queue.name + HOLDING_SUFFIX
    moved = 0
    if old:
        _call(conn, "queue_declare", holding, durable=True, auto_delete=False,
              arguments=_arguments(queue))
        for exchange, key in _bindings(queue):
            with contextlib.suppress(Exception):  # no such exchange: nothing to take over
                _call(conn, "queue_bind", holding, exchange, key)
            _call(conn, "queue_unbind", queue.name, exchange, key)
        moved += move(conn, queue.name, holding)
        _call(conn, "queue_delete", queue.name)  # unbound and empty: nothing is lost
    _ensure_exchange(conn, queue)
    channel = _channel(conn)
    try:
        queue(channel).declare()  # type: ignore[no-untyped-call]
    finally:
        channel.close()
    for exchange, key in _bindings(queue):
        _call(conn, "queue_unbind", holding, exchange, key)
    back = move(conn, holding, queue.name)
    _call(conn, "queue_delete", holding)
    return moved if old else back  # a resumed run counts what it found held


def _channel(conn: Connection) -> Any:
    return conn.channel()  # type: ignore[no-untyped-call]


def _call(conn: Connection, method: str, *args: Any, **options: Any) -> Any:
    """One AMQP method on a channel of its own (a refusal closes the channel)."""
    channel = _channel(conn)
    try:
        return getattr(channel, method)(*args, **options)
    finally:
        with contextlib.suppress(Exception):  # the broker closed it already
            channel.close()


def _ensure_exchange(conn: Connection, queue: Queue) -> None:
    """The queue's exchange with the type this code gives it: one of another type (a
    task exchange moving between direct and topic) is deleted and declared again."""
    exchange = queue.exchange
    declare = {"type": exchange.type, "durable": True, "auto_delete": False}
    try:
        _call(conn, "exchange_declare", exchange.name, **declare)
    except Exception as exc:
        if getattr(exc, "code", None) != PRECONDITION_FAILED:
            raise
        _call(conn, "exchange_delete", exchange.name)
        _call(conn, "exchange_declare", exchange.name, **declare)


def move(conn: Connection, source: str, target: str, batch: int = 200) -> int:
    """Move every message waiting in ``source`` to ``target``: copies published in
    batches with publisher confirms, and the originals of a batch acknowledged only once
    the broker confirmed every copy in it (a quorum queue confirms after its disk write,
    so one publish at a time would move a few dozen a second). Returns how many moved."""
    channel = _channel(conn)
    outstanding: set[int] = set()
    refused: list[int] = []

    def confirmed(delivery_tag: int, multiple: bool = False) -> None:
        outstanding.difference_update(
            {t for t in outstanding if t <= delivery_tag} if multiple else {delivery_tag})

    def nacked(delivery_tag: int, multiple: bool = False, requeue: bool = False) -> None:
        refused.append(delivery_tag)
        confirmed(delivery_tag, multiple)

    channel.events["basic_ack"].add(confirmed)
    channel.events["basic_nack"].add(nacked)
    channel.confirm_select()
    published = moved = 0
    try:
        while True:
            last = None
            while len(outstanding) < batch and (
                    message := channel.basic_get(source, no_ack=False)) is not None:
                copy = Message(message.body, **message.properties)
                # the raw publish: confirms are awaited per batch below
                channel._basic_publish(copy, exchange="", routing_key=target, mandatory=True)
                published += 1
                outstanding.add(published)
                last = message.delivery_tag
            if last is None:
                return moved
            while outstanding:
                conn.drain_events(timeout=30)  # type: ignore[no-untyped-call]
            if refused:
                raise RuntimeError(f"the broker refused {len(refused)} copies into {target}: "
                                   f"their originals stay in {source}")
            channel.basic_ack(last, multiple=True)
            moved = published
    finally:
        with contextlib.suppress(Exception):
            channel.close()
