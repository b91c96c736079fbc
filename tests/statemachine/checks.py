"""The invariants, over the driver's ``Snapshot`` (plain data, no shop models).

``check_always`` holds after every step; ``check_settled`` once no fault is left and
every message, event and beat job has had its turn (``World.settle``). Each invariant
fails on a line of its own, so hypothesis tells the bugs apart.
"""

from __future__ import annotations

from collections import defaultdict

from tests.statemachine.driver import IntentRow, OrderRow, RefundRow, Snapshot

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


# --- line refunds: money and units ------------------------------------------------------

def _line_refund_key(key: str) -> bool:
    return ":refund:" in key  # ``<order>:<attempt>:refund:<request>``; a release's is ":refund"


def _applied(snap: Snapshot) -> dict[str, tuple[int, ...]]:
    return dict(snap.shop_refunds_by_key)


def refunds_stay_within_what_was_captured(snap: Snapshot) -> None:
    """Line refunds asked of a payment (reserved, sent or done) never exceed what it
    captured, and money refunded never exceeds money captured (ledger and provider)."""
    captured = {p.reference: p.amount_captured for p in snap.payments}
    asked: dict[str | None, int] = defaultdict(int)
    for r in snap.refunds:
        asked[r.payment_reference] += r.amount
    for reference, amount in asked.items():
        assert amount <= captured[reference], \
            f"line refunds of {amount} asked of {reference}, which captured {captured[reference]}"
    for i in snap.intents:
        assert i.amount_refunded <= i.amount_received, f"intent {i}"


def refunded_units_stay_within_what_was_bought(snap: Snapshot) -> None:
    """Per order line: units in its refund requests are the units it counts as refunded,
    and never more than it bought."""
    bought = {(o.id, sku): qty for o in snap.orders for sku, qty in o.lines}
    asked: dict[tuple[object, str], int] = defaultdict(int)
    for r in snap.refunds:
        for sku, quantity, _restock, _done in r.lines:
            asked[(r.order_id, sku)] += quantity
    for order_id, sku, refunded in snap.line_refunded:
        assert refunded == asked[(order_id, sku)] <= bought[(order_id, sku)], \
            f"order {order_id} {sku}: {refunded} counted refunded, {asked[(order_id, sku)]} " \
            f"in requests, {bought[(order_id, sku)]} bought"


def each_line_refund_moves_money_once(snap: Snapshot) -> None:
    """At the provider, each line refund's key took effect at most once, for its amount,
    and a succeeded one exactly once; no other key refunded a line."""
    applied = _applied(snap)
    by_key = {r.provider_key: r for r in snap.refunds}
    for key, amounts in applied.items():
        if not _line_refund_key(key):
            continue
        request = by_key.get(key)
        assert request is not None, f"a refund under {key} that no request made: {amounts}"
        assert list(amounts) == [request.amount], \
            f"refund {key} took effect {list(amounts)}, asked {request.amount}"
    for r in snap.refunds:
        if r.status == "succeeded":
            assert applied.get(r.provider_key) == (r.amount,), \
                f"a succeeded refund of {r.amount} moved {applied.get(r.provider_key)}"


def restocked_once_and_only_by_a_person(snap: Snapshot) -> None:
    """Only a succeeded request's ``restock`` lines are restocked, and all of them; the
    shelf holds what it started with, plus those units, less what shipped (once), moved
    otherwise only by the warehouse's counts (each on the timeline)."""
    restocked: dict[str, int] = defaultdict(int)
    for r in snap.refunds:
        for sku, quantity, restock, done in r.lines:
            assert done == (restock and r.status == "succeeded"), \
                f"{sku} x{quantity} (restock {restock}) restocked {done} on a {r.status} refund"
            restocked[sku] += quantity if done else 0
    initial, shipped = dict(snap.initial_stock), dict(snap.shipped)
    for p in snap.products:
        expected = initial[p.sku] + restocked[p.sku] - shipped.get(p.sku, 0) + p.corrected
        assert p.on_hand == expected, \
            f"{p.sku}: on_hand {p.on_hand}, expected {initial[p.sku]} + restocked " \
            f"{restocked[p.sku]} - shipped {shipped.get(p.sku, 0)} + the warehouse's " \
            f"counts {p.corrected}"


def the_ledger_keeps_line_refunds_apart(snap: Snapshot) -> None:
    """The ledger's line-refund rows are exactly the succeeded requests; the rest of its
    rows (dashboard refunds, releases) with them never exceed what it says was refunded."""
    succeeded: dict[str | None, int] = defaultdict(int)
    for r in snap.refunds:
        if r.status == "succeeded":
            succeeded[r.payment_reference] += r.amount
    rows: dict[str | None, int] = defaultdict(int)
    lines: dict[str | None, int] = defaultdict(int)
    for row in snap.ledger_refunds:
        rows[row.payment_reference] += row.amount
        if row.reason.startswith("line_refund"):
            lines[row.payment_reference] += row.amount
    for pay in snap.payments:
        assert lines[pay.reference] == succeeded[pay.reference], \
            f"{pay.reference}: line-refund rows {lines[pay.reference]}, succeeded requests " \
            f"{succeeded[pay.reference]}"
        assert rows[pay.reference] <= pay.amount_refunded, \
            f"{pay.reference}: refund rows {rows[pay.reference]}, refunded {pay.amount_refunded}"


def check_always(snap: Snapshot) -> None:
    no_unexpected_errors(snap)
    nothing_negative(snap)
    reserved_stock_matches_orders(snap)
    unshippable_lines_are_refunded_exactly(snap)
    customers_are_told_at_most_once(snap)
    captured_at_most_once_and_confirmed_exactly_once(snap)
    non_terminal_orders_are_visible_to_admins(snap)
    refunds_stay_within_what_was_captured(snap)
    refunded_units_stay_within_what_was_bought(snap)
    each_line_refund_moves_money_once(snap)
    restocked_once_and_only_by_a_person(snap)
    the_ledger_keeps_line_refunds_apart(snap)


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
            by_lines = _line_refunds_applied(snap, order)
            assert not held, f"{_name(order)}: authorizations still held: {held}"
            assert kept + by_hand + by_lines == order.total, \
                f"{_name(order)}: {kept} taken at the provider ({by_hand} refunded by hand, " \
                f"{by_lines} by line refunds)"
            if order.fulfillment == "unfulfillable" and "refund_failed" not in order.open_flags:
                assert kept == 0, f"{_name(order)} is unfulfillable but {kept} is kept"


def _line_refunds_applied(snap: Snapshot, order: OrderRow) -> int:
    keys = {r.provider_key for r in snap.refunds if r.order_id == order.id}
    return sum(sum(amounts) for key, amounts in snap.shop_refunds_by_key if key in keys)


def _waits_for_a_person(refund: RefundRow, order: OrderRow) -> bool:
    return refund.status in ("needs_attention", "sent") and "refund_failed" in order.open_flags


def line_refunds_end_and_the_ledger_adds_up(snap: Snapshot) -> None:
    """Every line refund succeeded or waits for a person (flagged); a confirmed order's
    refunded money is its succeeded line refunds plus what was refunded by hand (plus
    any a person must look at whose outcome was unknown); with nothing in flight, the
    ledger's refund rows add up to it."""
    orders = {o.id: o for o in snap.orders}
    for r in snap.refunds:
        assert r.status == "succeeded" or _waits_for_a_person(r, orders[r.order_id]), \
            f"{_name(orders[r.order_id])}: a line refund of {r.amount} ended {r.status}, " \
            f"flags {sorted(orders[r.order_id].open_flags)}"
    by_order = _intents_by_order(snap)
    pending = dict(snap.refund_pending)
    for order in snap.orders:
        if order.stage != "confirmed":
            continue
        succeeded = sum(r.amount for r in snap.refunds
                        if r.order_id == order.id and r.status == "succeeded")
        unknown = _line_refunds_applied(snap, order) - succeeded
        by_hand = sum(i.refunded_outside for i in by_order[str(order.id)])
        for pay in snap.payments:
            if pay.order_id != order.id or pay.attempt != order.attempt:
                continue
            assert pay.amount_refunded == succeeded + by_hand + unknown, \
                f"{_name(order)}: ledger refunded {pay.amount_refunded}; line refunds " \
                f"{succeeded} (+{unknown} unknown), by hand {by_hand}"
            rows = sum(x.amount for x in snap.ledger_refunds
                       if x.payment_reference == pay.reference)
            if not pending.get(pay.reference) and not unknown:
                assert rows == pay.amount_refunded, \
                    f"{_name(order)}: refund rows {rows}, refunded {pay.amount_refunded}"


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
    line_refunds_end_and_the_ledger_adds_up(snap)
    customers_are_told_of_their_goods(snap)
