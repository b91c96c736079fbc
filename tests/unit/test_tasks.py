"""Task declarations and the shared retry policy (unit level: a stand-in task)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from celery.exceptions import Reject

import shop.orders.workflow.tasks  # noqa: F401  (registers the tasks)
from shop.celery import ROUTES, app
from shop.messaging import runner as tasks
from shop.orders.lease import OrderBusy
from shop.payments.gateway import PaymentTransientError

SHOP_TASKS = sorted(name for name in app.tasks if name.startswith("shop."))


def test_every_workflow_task_is_routed_to_its_domain_queue() -> None:
    assert set(SHOP_TASKS) <= {n for n in ROUTES if "*" not in n}
    assert ROUTES["shop.orders.charge_payment"] == "payments"
    assert ROUTES["shop.orders.send_confirmation"] == "notifications"


def test_new_orders_and_money_already_decided_have_queues_of_their_own() -> None:
    """In a sale, a backlog of new orders' first steps on ``orders`` would hold every
    reservation behind it, and a backlog of charges on ``payments`` every capture: the
    two provider endpoints would take turns instead of working together."""
    decided = ("shop.orders.capture_payment", "shop.payments.void_payment",
               "shop.orders.refund_lines")
    assert {ROUTES[name] for name in decided} == {"settlements"}
    assert "settlements" not in {ROUTES[n] for n in SHOP_TASKS if n not in decided}
    assert [n for n in SHOP_TASKS if ROUTES[n] == "intake"] == ["shop.orders.check_inventory"]


@pytest.mark.parametrize("name", SHOP_TASKS)
def test_tasks_ack_late_requeue_on_worker_loss_and_leave_bounding_to_us(name: str) -> None:
    task = app.tasks[name]
    assert task.acks_late is True
    assert task.reject_on_worker_lost is True
    # None on the task: Celery's own default of 3 would drop a busy-waiting step.
    assert task.max_retries is None


def test_reliability_settings() -> None:
    conf = app.conf
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.task_soft_time_limit < conf.task_time_limit
    # A step running when the broker connection drops finishes; its redelivered copy
    # then finds the work done. Cancelling it could cut an email between SMTP's
    # "accepted" and the ledger's "sent" (chaos scenario 2b), and so send it twice.
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is False


class Retried(Exception):
    def __init__(self, countdown: float) -> None:
        super().__init__(countdown)
        self.countdown = countdown


@dataclass
class Request:
    id: str = "msg-1"
    retries: int = 0
    delivery_info: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeTask:
    name: str = "shop.test"
    request: Request = field(default_factory=Request)

    def retry(self, *, exc: Exception, countdown: float) -> Exception:
        return Retried(countdown)


@pytest.fixture(autouse=True)
def no_outbox(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in task's message is not in any outbox (there is no database here)."""
    monkeypatch.setattr(tasks, "mark_consumed", lambda *_a, **_k: None)


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    seen: dict[str, int] = {}

    def count(_task: Any, key: str) -> int:
        seen[key] = seen.get(key, 0) + 1
        return seen[key]

    monkeypatch.setattr(tasks, "_count", count)
    return seen


def test_a_busy_order_is_retried_soon_however_often(counts: dict[str, int]) -> None:
    def busy(_: Any) -> None:
        raise OrderBusy("o")

    delays = []
    for retries in (0, 50):
        with pytest.raises(Retried) as retried:
            tasks.run_step(FakeTask(request=Request(retries=retries)), busy,  # type: ignore[arg-type]
                           lambda *_: pytest.fail("must not give up"))
        delays.append(retried.value.countdown)
    assert delays[0] <= 1
    assert 5 <= delays[1] <= 10


def test_transient_errors_back_off_then_fail_the_step(
        counts: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_RETRY_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("SHOP_RETRY_BASE_DELAY", "2")
    from shop.config import get_settings

    get_settings.cache_clear()
    gave_up: list[Exception] = []

    def flaky(_: Any) -> None:
        raise PaymentTransientError("timeout")

    delays = []
    for attempt in range(2):
        with pytest.raises(Retried) as retried:
            tasks.run_step(FakeTask(request=Request(retries=attempt)), flaky,  # type: ignore[arg-type]
                           lambda _s, e: gave_up.append(e))
        delays.append(retried.value.countdown)
    assert 1 <= delays[0] <= 2
    assert 2 <= delays[1] <= 4
    tasks.run_step(FakeTask(request=Request(retries=2)), flaky,  # type: ignore[arg-type]
                   lambda _s, e: gave_up.append(e))
    assert len(gave_up) == 1


def test_a_message_that_keeps_killing_its_worker_is_dead_lettered(
        counts: dict[str, int]) -> None:
    gave_up: list[Exception] = []
    counts["msg-1:0"] = 10  # ten earlier starts of this very delivery
    redelivered = FakeTask(request=Request(delivery_info={"redelivered": True}))
    with pytest.raises(Reject) as rejected:
        tasks.run_step(redelivered, lambda _: None,  # type: ignore[arg-type]
                       lambda _s, e: gave_up.append(e))
    assert rejected.value.requeue is False
    assert len(gave_up) == 1


def test_backoff_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_RETRY_MAX_DELAY", "5")
    from shop.config import get_settings

    get_settings.cache_clear()
    assert all(tasks.backoff(n) <= 5 for n in range(20))


def test_on_rabbitmq_queues_are_quorum_durable_dead_lettering_with_publisher_confirms() -> None:
    from shop.config import Settings
    from shop.messaging.broker import DELIVERY_LIMIT, QUEUES, task_queues, transport_options

    settings = Settings(broker_url="amqp://guest:guest@127.0.0.1:5672//")
    assert settings.broker_queue_type == "quorum"
    assert transport_options(settings) == {"confirm_publish": True}
    queues = {q.name: q for q in task_queues(settings)}
    assert set(queues) == set(QUEUES) == {
        "intake", "orders", "payments", "settlements", "notifications", "reports"}
    for name, queue in queues.items():
        assert queue.durable is True
        assert queue.exchange.type == "topic"  # native delayed delivery routes on topic
        assert queue.queue_arguments == {"x-queue-type": "quorum",
                                         "x-dead-letter-exchange": "shop.dlx",
                                         "x-dead-letter-routing-key": name,
                                         "x-delivery-limit": DELIVERY_LIMIT,
                                         "x-dead-letter-strategy": "at-least-once",
                                         "x-overflow": "reject-publish"}


def test_classic_queues_are_declared_as_earlier_releases_declared_them() -> None:
    from shop.config import Settings
    from shop.messaging.broker import QUEUES, owned_queues, task_queues

    settings = Settings(broker_url="amqp://guest:guest@127.0.0.1:5672//",
                        broker_queue_type="classic")
    for queue in task_queues(settings):
        assert queue.exchange.type == "direct"
        assert queue.queue_arguments == {"x-queue-type": "classic",
                                         "x-dead-letter-exchange": "shop.dlx",
                                         "x-dead-letter-routing-key": queue.name}
    # RabbitMQ takes x-queue-type classic as equivalent to no argument at all
    assert {q.name: q.queue_arguments for q in owned_queues(settings)[len(QUEUES):]} == {
        name: {"x-queue-type": "classic"}
        for name in ("shop.dead_letter", "shop.fulfillment", "shop.fulfillment_cancellations")
    } | {"shop.warehouse": {"x-queue-type": "classic", "x-dead-letter-exchange": "shop.dlx"}}


def test_the_embedded_broker_has_no_queue_types(tmp_path: Any) -> None:
    from shop.config import Settings
    from shop.messaging.broker import countdown, owned_queues

    settings = Settings(broker_url=f"filesystem://{tmp_path}/b", broker_queue_type="quorum")
    assert [q.queue_arguments for q in owned_queues(settings)] == [None] * 10
    assert countdown(settings, 0.25) == 0.25


def test_a_countdown_on_quorum_queues_is_at_least_the_one_second_they_can_delay() -> None:
    from shop.config import Settings
    from shop.messaging.broker import countdown

    quorum = Settings(broker_url="amqp://guest@localhost//")
    classic = Settings(broker_url="amqp://guest@localhost//", broker_queue_type="classic")
    assert [countdown(quorum, s) for s in (0, 0.2, 1, 7.5)] == [0, 1.0, 1, 7.5]
    assert [countdown(classic, s) for s in (0, 0.2, 7.5)] == [0, 0.2, 7.5]


def test_the_embedded_broker_polls_fast(tmp_path: Any) -> None:
    from shop.config import Settings
    from shop.messaging.broker import transport_options

    options = transport_options(Settings(broker_url=f"filesystem://{tmp_path}/b",
                                         broker_polling_interval=0.05))
    assert options["polling_interval"] == 0.05
    assert options["data_folder_in"] == options["data_folder_out"] == f"{tmp_path}/b/queue"


def test_a_worker_process_builds_its_payment_gateway_once() -> None:
    from shop.payments.providers import get_gateway

    get_gateway.cache_clear()
    try:
        assert get_gateway() is get_gateway()
    finally:
        get_gateway.cache_clear()


def test_an_unexpected_exception_is_retried_then_given_up(counts: dict[str, int]) -> None:
    gave_up: list[Exception] = []

    def buggy(_: Any) -> None:
        raise KeyError("a bug, not an outage")

    for attempt in range(4):
        with pytest.raises(Retried):
            tasks.run_step(FakeTask(request=Request(retries=attempt)), buggy,  # type: ignore[arg-type]
                           lambda _s, e: gave_up.append(e))
    tasks.run_step(FakeTask(request=Request(retries=4)), buggy,  # type: ignore[arg-type]
                   lambda _s, e: gave_up.append(e))
    assert len(gave_up) == 1  # five attempts (SHOP_RETRY_MAX_ATTEMPTS), then never again


def test_a_permanent_error_gives_up_at_once(counts: dict[str, int]) -> None:
    from shop.payments.gateway import PaymentProviderError

    gave_up: list[Exception] = []

    def refused(_: Any) -> None:
        raise PaymentProviderError("refused")

    tasks.run_step(FakeTask(), refused, lambda _s, e: gave_up.append(e))  # type: ignore[arg-type]
    assert [type(e).__name__ for e in gave_up] == ["PaymentProviderError"]


def test_a_soft_time_limit_counts_as_a_transient_failure(counts: dict[str, int]) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    def slow(_: Any) -> None:
        raise SoftTimeLimitExceeded()

    with pytest.raises(Retried):
        tasks.run_step(FakeTask(), slow, lambda *_: pytest.fail("not yet"))  # type: ignore[arg-type]
    assert counts["msg-1:failures"] == 1


def test_a_hard_time_limit_counts_one_failure_and_gives_the_message_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from celery.exceptions import TimeLimitExceeded

    counted: list[str] = []
    monkeypatch.setattr(tasks, "count_delivery",
                        lambda _s, *, message_id, task_name: counted.append(message_id) or 1)
    task = app.tasks["shop.orders.charge_payment"]
    task.on_failure(TimeLimitExceeded(30), "msg-9", (), {}, None)
    assert counted == ["msg-9:failures"]
    assert app.conf.task_acks_on_timeout is False  # the message comes back, not acked


def test_a_redelivered_message_that_ran_out_of_time_too_often_gives_up(
        counts: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "_peek", lambda _task, key: 5 if key.endswith("failures") else 0)
    gave_up: list[Exception] = []
    redelivered = FakeTask(request=Request(delivery_info={"redelivered": True}))
    tasks.run_step(redelivered, lambda _: pytest.fail("must not run"),  # type: ignore[arg-type]
                   lambda _s, e: gave_up.append(e))
    assert len(gave_up) == 1


def test_a_payment_steps_provider_calls_fit_inside_its_soft_time_limit() -> None:
    from shop.orders import lease
    from shop.payments.gateway import CALL_TIMEOUT, MAX_CALLS_PER_STEP

    charge = app.tasks["shop.orders.charge_payment"]
    assert MAX_CALLS_PER_STEP * CALL_TIMEOUT < charge.soft_time_limit < charge.time_limit
    assert charge.time_limit < lease.LEASE_SECONDS  # a lease never ends under a live call


def test_a_rate_limit_waits_what_the_provider_asks_without_counting_an_attempt(
        counts: dict[str, int]) -> None:
    from shop.payments.gateway import PaymentRateLimited

    def limited(_: Any) -> None:
        raise PaymentRateLimited("429", retry_after=7.0)

    with pytest.raises(Retried) as retried:
        tasks.run_step(FakeTask(), limited, lambda *_: pytest.fail("not a failure"))  # type: ignore[arg-type]
    assert 7.0 <= retried.value.countdown <= 10.5
    assert "msg-1:failures" not in counts


def test_workers_of_orders_and_payments_consume_intake_and_settlements_as_before() -> None:
    """``-Q orders`` and ``-Q payments`` were whole workers before ``intake`` and
    ``settlements`` existed: such workers still take new orders, captures, voids and
    refunds (from the declared queues, not new ones by those names on the default
    exchange)."""
    from types import SimpleNamespace

    from shop.celery import _consume_implied_queues

    queues = app.amqp.queues
    declared = queues["settlements"]
    before = queues.consume_from
    try:
        queues.select(["orders", "payments", "notifications"])
        _consume_implied_queues(SimpleNamespace(app=app))
        assert list(queues.consume_from) == [
            "orders", "payments", "notifications", "intake", "settlements"]
        assert queues.consume_from["settlements"] is declared
        queues.select(["notifications", "reports"])  # neither: nothing implied
        _consume_implied_queues(SimpleNamespace(app=app))
        assert list(queues.consume_from) == ["notifications", "reports"]
    finally:
        queues._consume_from = before
