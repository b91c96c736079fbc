"""How the migration and the doctor compare a live queue's arguments with the shop's."""

from __future__ import annotations

from shop.config import Settings
from shop.messaging import migration
from shop.messaging.broker import task_queues

QUORUM = Settings(broker_url="amqp://guest@localhost//")
CLASSIC = Settings(broker_url="amqp://guest@localhost//", broker_queue_type="classic")


def test_a_classic_queue_without_a_type_argument_is_what_the_classic_setting_declares() -> None:
    orders = task_queues(CLASSIC)[0]
    live = {"x-dead-letter-exchange": "shop.dlx", "x-dead-letter-routing-key": "orders"}
    assert not migration.arguments_differ(live, orders)
    assert migration.arguments_differ(live, task_queues(QUORUM)[0])


def test_the_type_is_named_first_then_each_other_argument() -> None:
    orders = task_queues(QUORUM)[0]
    classic = dict(task_queues(CLASSIC)[0].queue_arguments)
    assert migration.describe(classic, orders) == "a classic queue, expected quorum"
    other_limit = {**orders.queue_arguments, "x-delivery-limit": 50}
    assert migration.describe(other_limit, orders) == (
        "declared with other arguments: x-delivery-limit 50 (expected 20)")


def test_the_refusal_text_names_the_argument_and_its_live_value() -> None:
    found = migration._INEQUIVALENT.search(
        "PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue 'q1' in "
        "vhost 'v': received none but current is the value 'dlx' of type 'longstr'")
    assert found is not None
    assert (found["key"], found["typed"], found["type"]) == (
        "x-dead-letter-exchange", "dlx", "longstr")
    plain = migration._INEQUIVALENT.search(
        "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'q1' in vhost "
        "'v': received '5' but current is '50'")
    assert plain is not None
    assert (plain["key"], plain["plain"]) == ("x-delivery-limit", "50")
