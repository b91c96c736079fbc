"""The order state machine: the only place that says which status follows which.

``Stage`` is the workflow's own position; each stage shows as one public
``OrderStatus`` of the contract. ``TRANSITIONS`` is the whole table: a move not in
it raises ``IllegalTransition``. ``Order.apply`` in ``models.py`` is its only user.
"""

from __future__ import annotations

from enum import StrEnum


class OrderStatus(StrEnum):
    """The contract's statuses, stored in ``orders.status`` for people and BI tools."""

    PENDING = "pending"
    REQUIRES_ACTION = "requires_action"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Stage(StrEnum):
    PLACED = "placed"
    IN_STOCK = "in_stock"
    REQUIRES_ACTION = "requires_action"
    AUTHORIZED = "authorized"
    RESERVED = "reserved"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def status(self) -> OrderStatus:
        return STATUS_OF[self]

    @property
    def terminal(self) -> bool:
        return self in (Stage.CONFIRMED, Stage.FAILED, Stage.CANCELLED)


class Step(StrEnum):
    """The contract's ``failure.step`` values."""

    INVENTORY = "inventory"
    PAYMENT = "payment"
    RESERVATION = "reservation"
    NOTIFICATION = "notification"
    FULFILLMENT = "fulfillment"


class Event(StrEnum):
    """What happened to an order; the value is the timeline's ``type``."""

    INVENTORY_CONFIRMED = "inventory.confirmed"
    INVENTORY_SHORT = "inventory.out_of_stock"
    PAYMENT_AUTHORIZED = "payment.authorized"
    PAYMENT_REQUIRES_ACTION = "payment.requires_action"
    PAYMENT_FAILED = "payment.failed"
    STOCK_RESERVED = "stock.reserved"
    STOCK_SHORT = "stock.out_of_stock"
    PAYMENT_CAPTURED = "payment.captured"
    PAYMENT_CANCELLED = "payment.cancelled"  # at the provider: expired, abandoned, dashboard
    STEP_FAILED = "step.failed"
    RETRIED = "order.retried"  # by an admin: back to the inventory check
    RETRIED_PAYMENT = "order.retried_payment"  # by an admin: back to the payment step
    CANCELLED = "order.cancelled"


STATUS_OF: dict[Stage, OrderStatus] = {
    Stage.PLACED: OrderStatus.PENDING,
    Stage.IN_STOCK: OrderStatus.PENDING,
    Stage.REQUIRES_ACTION: OrderStatus.REQUIRES_ACTION,
    Stage.AUTHORIZED: OrderStatus.PENDING,
    Stage.RESERVED: OrderStatus.PENDING,
    Stage.CONFIRMED: OrderStatus.CONFIRMED,
    Stage.FAILED: OrderStatus.FAILED,
    Stage.CANCELLED: OrderStatus.CANCELLED,
}

_IN_FLIGHT = (Stage.PLACED, Stage.IN_STOCK, Stage.REQUIRES_ACTION, Stage.AUTHORIZED, Stage.RESERVED)

TRANSITIONS: dict[tuple[Stage, Event], Stage] = {
    (Stage.PLACED, Event.INVENTORY_CONFIRMED): Stage.IN_STOCK,
    (Stage.PLACED, Event.INVENTORY_SHORT): Stage.FAILED,
    (Stage.IN_STOCK, Event.PAYMENT_AUTHORIZED): Stage.AUTHORIZED,
    (Stage.IN_STOCK, Event.PAYMENT_REQUIRES_ACTION): Stage.REQUIRES_ACTION,
    (Stage.IN_STOCK, Event.PAYMENT_FAILED): Stage.FAILED,
    (Stage.REQUIRES_ACTION, Event.PAYMENT_AUTHORIZED): Stage.AUTHORIZED,
    (Stage.REQUIRES_ACTION, Event.PAYMENT_FAILED): Stage.FAILED,
    (Stage.AUTHORIZED, Event.STOCK_RESERVED): Stage.RESERVED,
    (Stage.AUTHORIZED, Event.STOCK_SHORT): Stage.FAILED,
    (Stage.RESERVED, Event.PAYMENT_CAPTURED): Stage.CONFIRMED,
    (Stage.RESERVED, Event.PAYMENT_FAILED): Stage.FAILED,
    **{(stage, Event.PAYMENT_CANCELLED): Stage.FAILED
       for stage in (Stage.REQUIRES_ACTION, Stage.AUTHORIZED, Stage.RESERVED)},
    **{(stage, Event.STEP_FAILED): Stage.FAILED for stage in _IN_FLIGHT},
    (Stage.FAILED, Event.RETRIED): Stage.PLACED,
    (Stage.FAILED, Event.RETRIED_PAYMENT): Stage.IN_STOCK,
    **{(stage, Event.CANCELLED): Stage.CANCELLED for stage in (*_IN_FLIGHT, Stage.FAILED)},
    (Stage.CONFIRMED, Event.CANCELLED): Stage.CANCELLED,
}


# What the customer reads for each failure reason (``failure.message``). A card's own
# decline text from the provider is shown instead when there is one; internal details
# (exception text, provider messages about our requests) go to logs and the admin API.
CUSTOMER_MESSAGES: dict[str, str] = {
    "out_of_stock": "Some items in your order are out of stock.",
    "out_of_stock_refunded": "Some items in your order are out of stock. The payment you made "
                             "is refunded in full.",
    "card_declined": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "Your card's security code is incorrect.",
    "authentication_failed": "The payment could not be authenticated.",
    "payment_cancelled": "The payment was cancelled.",
    "payment_rejected": "The payment provider could not accept this payment.",
    "payment_unavailable": "We could not reach the payment provider. No money was taken.",
    "capture_failed": "The payment could not be completed. No money was taken.",
    "timeout": "The order could not be completed in time. No money was taken.",
}


def customer_message(reason: str, provider_text: str | None = None) -> str:
    """The customer's text for a failure ``reason`` (a card decline may bring its own)."""
    if provider_text and reason in ("card_declined", "insufficient_funds", "expired_card",
                                    "incorrect_cvc", "authentication_failed"):
        return provider_text
    return CUSTOMER_MESSAGES.get(reason, "The order could not be completed.")


class IllegalTransition(Exception):
    """An event that the table does not allow from the order's current stage."""

    def __init__(self, stage: Stage, event: Event) -> None:
        super().__init__(f"{event.value} is not allowed from stage {stage.value}")
        self.stage = stage
        self.event = event


def next_stage(stage: Stage, event: Event) -> Stage:
    """The stage that ``event`` leads to from ``stage``, or ``IllegalTransition``."""
    try:
        return TRANSITIONS[(stage, event)]
    except KeyError:
        raise IllegalTransition(stage, event) from None
