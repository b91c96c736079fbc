"""The invariants, over the driver's ``Snapshot`` (plain data, no shop models).

``check_always`` holds after every step; ``check_settled`` once no fault is left and
every message, event and beat job has had its turn (``World.settle``). Each invariant
fails on a line of its own, so hypothesis tells the bugs apart.
"""

from __future__ import annotations

from collections import defaultdict

from tests.statemachine.driver import IntentRow, OrderRow, Snapshot

TERMINAL = ("confirmed", "failed", "cancelled")


def _intents_by_order(snap: Snapshot) -> dict[str, list[IntentRow]]:
    found: dict[str, list[IntentRow]] = defaultdict(list)
    for intent in snap.intents:
        found[intent.order_id].append(intent)
    return found


def _name(order: OrderRow) -> str:
    return f"order {order.index} ({order.stage}, total {order.total})"


def no_unexpected_errors(snap: Snapshot) -> None:
    """Steps fail only with the runtime's classes (transient, permanent, busy)."""
    assert not snap.unexpected, f"unexpected exceptions: {list(snap.unexpected)}"


def nothing_negative(snap: Snapshot) -> None:
    for p in snap.products:
        assert min(p.on_hand, p.reserved, p.on_hand - p.reserved) >= 0, \
            f"{p.sku}: on_hand {p.on_hand}, reserved {p.reserved}"
    for pay in snap.payments:
        assert min(pay.amount, pay.amount_captured, pay.amount_refunded) >= 0, f"payment {pay}"
        assert pay.amount_refunded <= pay.amount_captured, f"payment {pay}"
    for i in snap.intents:
        assert 0 <= i.amount_refunded <= i.amount_received <= i.amount, f"intent {i}"


def reserved_stock_matches_orders(snap: Snapshot) -> None:
    """Reserved units equal what the orders that hold stock have not shipped yet (nor
    given up: a line the warehouse cannot ship is released)."""
    held: dict[str, int] = defaultdict(int)
    for order in snap.orders:
        if order.stock_reserved:
            for sku, quantity in order.outstanding:
                held[sku] += quantity
    for p in snap.products:
        assert p.reserved == held[p.sku], \
            f"{p.sku}: reserved {p.reserved}, held by orders {held[p.sku]}"


def stock_leaves_the_shelf_once(snap: Snapshot) -> None:
    """On the shelf: what the catalogue started with, less every unit shipped (once),
    moved only by the warehouse's counts (each on the timeline)."""
    for p in snap.products:
        assert p.on_hand == p.stocked - p.shipped + p.corrected, \
            f"{p.sku}: on_hand {p.on_hand}, stocked {p.stocked}, shipped {p.shipped}, " \
            f"corrected by {p.corrected}"


def unshippable_lines_are_refunded_exactly(snap: Snapshot) -> None:
    """The warehouse's refunds ask for exactly what the lines it cannot ship cost; only a
    confirmed order ever refuses a warehouse message for another reason than its state."""
    for order in snap.orders:
        assert order.warehouse_refunds_asked == order.unfulfilled_to_refund, \
            f"{_name(order)}: warehouse refunds asked {order.warehouse_refunds_asked}, " \
            f"the unshippable lines cost {order.unfulfilled_to_refund}"
    confirmed = {str(o.id) for o in snap.orders if o.stage == "confirmed"}
    for order_id, why in snap.dead_letters:
        assert order_id not in confirmed or "not confirmed" in why, \
            f"a warehouse message for confirmed order {order_id} was refused: {why}"


def customers_are_told_at_most_once(snap: Snapshot) -> None:
    for order in snap.orders:
        for what, _sent, delivered in (*order.shipment_emails, *order.line_refund_emails):
            assert delivered <= 1, f"{_name(order)}: {delivered} emails about {what}"


def captured_at_most_once_and_confirmed_exactly_once(snap: Snapshot) -> None:
    """No intent is captured twice, or for another amount than its order's total; a
    confirmed order's intent (its current attempt's) was captured exactly once."""
    by_order = _intents_by_order(snap)
    for order in snap.orders:
        for intent in by_order[str(order.id)]:
            assert intent.captures <= 1, \
                f"{_name(order)}: intent {intent.reference} captured {intent.captures} times"
            assert all(a == order.total for a in intent.captured_amounts), \
                f"{_name(order)}: intent {intent.reference} captured {intent.captured_amounts}"
        if order.stage == "confirmed":
            current = [i for i in by_order[str(order.id)] if i.attempt == str(order.attempt)]
            assert [i.captures for i in current] == [1], \
                f"{_name(order)} is confirmed; its attempt {order.attempt} intents: {current}"


def non_terminal_orders_are_visible_to_admins(snap: Snapshot) -> None:
    for order in snap.orders:
        if order.status in ("pending", "requires_action"):
            assert order.in_admin_view, f"{_name(order)} is in no admin view"


def check_always(snap: Snapshot) -> None:
    no_unexpected_errors(snap)
    nothing_negative(snap)
    reserved_stock_matches_orders(snap)
    stock_leaves_the_shelf_once(snap)
    unshippable_lines_are_refunded_exactly(snap)
    customers_are_told_at_most_once(snap)
    captured_at_most_once_and_confirmed_exactly_once(snap)
    non_terminal_orders_are_visible_to_admins(snap)


# --- once settled -----------------------------------------------------------------------

def everything_delivered(snap: Snapshot) -> None:
    assert not snap.undrained, f"messages that never got through: {list(snap.undrained)}"
    assert snap.unhandled_events == 0, f"{snap.unhandled_events} webhook events unhandled"


def every_order_ends(snap: Snapshot) -> None:
    for order in snap.orders:
        assert order.stage in TERMINAL or order.open_flags, \
            f"{_name(order)} never ended and is not flagged"


def no_money_held_for_orders_that_want_none(snap: Snapshot) -> None:
    """Failed or cancelled: nothing held or kept at the provider. Confirmed: its total
    (less what was refunded by hand in the dashboard), and nothing else held."""
    by_order = _intents_by_order(snap)
    for order in snap.orders:
        intents = by_order[str(order.id)]
        held = [i.reference for i in intents if i.status == "requires_capture"]
        kept = sum(i.amount_received - i.amount_refunded for i in intents)
        if order.stage in ("failed", "cancelled"):
            assert not held, f"{_name(order)}: authorizations still held: {held}"
            assert kept == 0, f"{_name(order)}: {kept} still taken at the provider"
        elif order.stage == "confirmed":
            by_hand = sum(i.refunded_outside for i in intents)
            assert not held, f"{_name(order)}: authorizations still held: {held}"
            assert kept + by_hand + order.shop_refunded == order.total, \
                f"{_name(order)}: {kept} taken at the provider ({by_hand} refunded by hand, " \
                f"{order.shop_refunded} by line refunds)"
            if order.fulfillment == "unfulfillable" and "refund_failed" not in order.open_flags:
                assert kept == 0, f"{_name(order)} is unfulfillable but {kept} is kept"


def ledger_equals_provider(snap: Snapshot) -> None:
    """Each payment row's captured and refunded amounts are its intent's."""
    intents = {i.reference: i for i in snap.intents}
    for pay in snap.payments:
        if pay.reference is None:
            continue
        intent = intents[pay.reference]
        assert (pay.amount_captured, pay.amount_refunded) == (
            intent.amount_received, intent.amount_refunded), \
            f"ledger {pay} but the provider has {intent}"


def confirmed_orders_are_emailed_or_flagged(snap: Snapshot) -> None:
    for order in snap.orders:
        if order.stage == "confirmed":
            emailed = order.email_ledger_sent and order.emails_delivered >= 1
            assert emailed or "email_failed" in order.open_flags, \
                f"{_name(order)}: no confirmation email and no open flag " \
                f"(ledger sent: {order.email_ledger_sent}, delivered: " \
                f"{order.emails_delivered}, flags: {sorted(order.open_flags)}, " \
                f"once left to the sweeper: {order.email_left_to_sweeper})"


def customers_are_told_of_their_goods(snap: Snapshot) -> None:
    """Each shipment, and each set of lines the warehouse cannot ship, of a confirmed
    order was emailed, or a person is told it was not."""
    for order in snap.orders:
        if order.stage != "confirmed":
            continue
        for what, sent, delivered in (*order.shipment_emails, *order.line_refund_emails):
            assert (sent and delivered == 1) or "email_failed" in order.open_flags, \
                f"{_name(order)}: no email about {what} (ledger sent: {sent}, delivered: " \
                f"{delivered}, flags: {sorted(order.open_flags)})"


def check_settled(snap: Snapshot) -> None:
    check_always(snap)
    everything_delivered(snap)
    every_order_ends(snap)
    no_money_held_for_orders_that_want_none(snap)
    ledger_equals_provider(snap)
    confirmed_orders_are_emailed_or_flagged(snap)
    customers_are_told_of_their_goods(snap)
