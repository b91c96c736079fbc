"""A shop's history for the report benchmark, written by set-based SQL (PostgreSQL).

``fill(conn, orders=N, days=D, end=...)`` writes N orders over the D days before
``end``: 1,000 products in four currencies (JPY without minor units), one to three
lines per order, and the timeline, payments and refunds the workflow would have
written. Each order's fate follows its number: 90 % confirmed, 2 % of them partly
refunded later, 3 % declined cards, 1 % short at inventory, 1 % short at reservation,
2 % cancelled after capture (refunded in full the next day), 1 % cancelled before
paying, and a few anomalies for the consistency section. Times of day lean to the
afternoon. Rows are written in time order, as a live shop appends them, then vacuumed
and analyzed as autovacuum would. Nothing goes through Python row by row: every table is
one INSERT ... SELECT over ``generate_series``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, text

PRODUCTS = 1000
ADJECTIVES = ["Blue", "Green", "Copper", "Linen", "Oak", "Wool", "Glass", "Stone", "Cotton",
              "Brass"]
NOUNS = ["mug", "teapot", "scarf", "lamp", "notebook", "candle", "bowl", "apron", "vase",
         "blanket"]

# (kind, share out of 100 by order number g % 100)
KIND_SQL = """CASE
    WHEN g % 50000 = 7 THEN 'stuck'
    WHEN g % 50000 = 8 THEN 'stale_auth'
    WHEN g % 50000 = 9 THEN 'email_failed'
    WHEN g % 100 < 88 THEN 'confirmed'
    WHEN g % 100 < 90 THEN 'partial'
    WHEN g % 100 < 93 THEN 'declined'
    WHEN g % 100 < 94 THEN 'inventory'
    WHEN g % 100 < 95 THEN 'reservation'
    WHEN g % 100 < 97 THEN 'cancelled_paid'
    ELSE 'cancelled' END"""

# Currencies by product number: which products each currency has.
CURRENCY_OF_PRODUCT = ("CASE WHEN i <= 600 THEN 'GBP' WHEN i <= 850 THEN 'EUR' "
                       "WHEN i <= 950 THEN 'USD' ELSE 'JPY' END")
# An order's currency by its number (12 : 5 : 2 : 1), and that currency's products.
CURRENCY_OF_ORDER = ("CASE WHEN (g * 31) % 20 < 12 THEN 'GBP' WHEN (g * 31) % 20 < 17 "
                     "THEN 'EUR' WHEN (g * 31) % 20 < 19 THEN 'USD' ELSE 'JPY' END")
FIRST_PRODUCT = {"GBP": 1, "EUR": 601, "USD": 851, "JPY": 951}
PRODUCT_COUNT = {"GBP": 600, "EUR": 250, "USD": 100, "JPY": 50}

# The timeline of each kind: (event type, seconds after placing, detail).
EVENTS: list[tuple[str, str, int, str]] = [
    *[(kind, "order.placed", 0, "{}") for kind in (
        "confirmed", "partial", "declined", "inventory", "reservation", "cancelled_paid",
        "cancelled", "stuck", "stale_auth", "email_failed")],
    *[(kind, "inventory.confirmed", 1, "{}") for kind in (
        "confirmed", "partial", "declined", "reservation", "cancelled_paid", "stale_auth",
        "email_failed")],
    ("inventory", "inventory.out_of_stock", 1, '{"step": "inventory", "reason": "out_of_stock"}'),
    *[(kind, "payment.authorized", 2, "{}") for kind in (
        "confirmed", "partial", "reservation", "cancelled_paid", "stale_auth", "email_failed")],
    ("declined", "payment.failed", 2, '{"step": "payment", "reason": "card_declined"}'),
    *[(kind, "stock.reserved", 3, "{}") for kind in (
        "confirmed", "partial", "cancelled_paid", "email_failed")],
    ("reservation", "stock.out_of_stock", 3,
     '{"step": "reservation", "reason": "out_of_stock"}'),
    *[(kind, "payment.captured", 5, "{}") for kind in (
        "confirmed", "partial", "cancelled_paid", "email_failed")],
    ("cancelled_paid", "order.cancelled", 86400, "{}"),
    ("cancelled", "order.cancelled", 600, "{}"),
]

STATEMENTS = [
    "SELECT setseed(0.42)",
    # Built from this module's constants only (no input): S608 does not apply.
    f"""INSERT INTO products (sku, name, price, currency, on_hand, reserved, created_at,
                              updated_at)
    SELECT 'B' || lpad(i::text, 4, '0'),
           (CAST(:adjectives AS text[]))[1 + i % 10] || ' '
               || (CAST(:nouns AS text[]))[1 + (i / 10) % 10] || ' No. ' || i,
           CASE WHEN i > 950 THEN 300 + (i * 577) % 29700 ELSE 199 + (i * 577) % 9800 END,
           {CURRENCY_OF_PRODUCT},
           CASE WHEN i % 97 = 0 THEN i % 5 ELSE 1000 + i END, 0, :start, :start
    FROM generate_series(1, {PRODUCTS}) AS i""",  # noqa: S608
    f"""CREATE UNLOGGED TABLE bench_orders AS
    SELECT g, md5('order' || g)::uuid AS id, {KIND_SQL} AS kind, {CURRENCY_OF_ORDER} AS currency,
           1 + g % 3 AS n_lines,
           :start + floor((g - 1) * :days / :orders) * interval '1 day'
                  + interval '1 second' * floor(CASE WHEN random() < 0.15
                        THEN 86400 * random() ELSE 25200 + 57600 * power(random(), 0.8) END)
               AS created_at
    FROM generate_series(1, :orders) AS g""",  # noqa: S608
    """CREATE UNLOGGED TABLE bench_lines AS
    SELECT o.id AS order_id, o.created_at, p.sku, p.name, 1 + (o.g + k) % 4 AS quantity,
           p.price AS unit_price, p.price * (1 + (o.g + k) % 4) AS line_total
    FROM bench_orders o
    CROSS JOIN LATERAL generate_series(1, o.n_lines) AS k
    JOIN products p ON p.sku = 'B' || lpad((CASE o.currency
        WHEN 'GBP' THEN 1 + (o.g * 37 + k * 101) % 600
        WHEN 'EUR' THEN 601 + (o.g * 37 + k * 101) % 250
        WHEN 'USD' THEN 851 + (o.g * 37 + k * 101) % 100
        ELSE 951 + (o.g * 37 + k * 101) % 50 END)::text, 4, '0')""",
    """CREATE UNLOGGED TABLE bench_totals AS
    SELECT order_id, sum(line_total) AS total FROM bench_lines GROUP BY order_id""",
    """INSERT INTO orders (id, email, name, status, stage, currency, subtotal, total,
        payment_method, payment_attempt, shipping_address, failure_step, failure_reason,
        failure_message, stock_reserved, resumes, created_at, updated_at, version)
    SELECT o.id, 'customer' || o.g || '@example.com', 'Customer ' || o.g,
        CASE WHEN o.kind IN ('confirmed', 'partial', 'email_failed') THEN 'confirmed'
             WHEN o.kind IN ('declined', 'inventory', 'reservation') THEN 'failed'
             WHEN o.kind IN ('cancelled', 'cancelled_paid') THEN 'cancelled'
             ELSE 'pending' END,
        CASE WHEN o.kind IN ('confirmed', 'partial', 'email_failed') THEN 'confirmed'
             WHEN o.kind IN ('declined', 'inventory', 'reservation') THEN 'failed'
             WHEN o.kind IN ('cancelled', 'cancelled_paid') THEN 'cancelled'
             WHEN o.kind = 'stale_auth' THEN 'authorized' ELSE 'placed' END,
        o.currency, t.total, t.total, 'pm_card_visa', 1,
        '{"line1": "1 Bench St", "city": "Leeds", "postal_code": "LS1", "country": "GB"}',
        CASE o.kind WHEN 'declined' THEN 'payment' WHEN 'inventory' THEN 'inventory'
                    WHEN 'reservation' THEN 'reservation' END,
        CASE o.kind WHEN 'declined' THEN 'card_declined'
                    WHEN 'inventory' THEN 'out_of_stock' WHEN 'reservation' THEN 'out_of_stock'
                    END,
        NULL, o.kind IN ('confirmed', 'partial', 'email_failed'), 0, o.created_at,
        o.created_at + interval '5 seconds', 1
    FROM bench_orders o JOIN bench_totals t ON t.order_id = o.id
    ORDER BY o.created_at""",
    """INSERT INTO order_lines (order_id, sku, name, quantity, unit_price, line_total)
    SELECT order_id, sku, name, quantity, unit_price, line_total FROM bench_lines
    ORDER BY created_at, order_id""",
    """INSERT INTO payments (order_id, attempt, provider, idempotency_key, reference, amount,
        currency, status, decline_code, amount_captured, amount_refunded, captured_at,
        created_at, updated_at)
    SELECT o.id, 1, 'dummy', concat(o.id::text, ':', '1'), 'pi_' || md5(o.id::text), t.total,
        o.currency,
        CASE o.kind WHEN 'partial' THEN 'partially_refunded' WHEN 'cancelled_paid'
             THEN 'refunded' WHEN 'declined' THEN 'failed' WHEN 'reservation' THEN 'voided'
             WHEN 'stale_auth' THEN 'authorized' ELSE 'captured' END,
        CASE WHEN o.kind = 'declined' THEN 'card_declined' END,
        CASE WHEN o.kind IN ('confirmed', 'partial', 'cancelled_paid', 'email_failed')
             THEN t.total ELSE 0 END,
        CASE o.kind WHEN 'partial' THEN t.total / 3 WHEN 'cancelled_paid' THEN t.total
             ELSE 0 END,
        CASE WHEN o.kind IN ('confirmed', 'partial', 'cancelled_paid', 'email_failed')
             THEN o.created_at + interval '5 seconds' END,
        o.created_at, o.created_at + interval '5 seconds'
    FROM bench_orders o JOIN bench_totals t ON t.order_id = o.id
    WHERE o.kind NOT IN ('inventory', 'cancelled', 'stuck')
    ORDER BY o.created_at""",
    """INSERT INTO refunds (payment_id, reference, amount, currency, reason, created_at)
    SELECT p.id, 're_' || md5(p.reference), p.amount_refunded, p.currency, 'requested_by_shop',
           p.created_at + CASE p.status WHEN 'refunded' THEN interval '1 day'
                                        ELSE interval '2 days' END
    FROM payments p WHERE p.amount_refunded > 0
    ORDER BY 6""",
    """INSERT INTO order_events (order_id, at, type, detail)
    SELECT o.id, o.created_at + e.seconds * interval '1 second', e.type, e.detail::json
    FROM bench_orders o JOIN (VALUES {events}) AS e(kind, type, seconds, detail)
      ON e.kind = o.kind
    ORDER BY 2""",
    """INSERT INTO order_attention (order_id, kind, message, created_at)
    SELECT id, 'email_failed', 'the confirmation email failed', created_at + interval '1 hour'
    FROM bench_orders WHERE kind = 'email_failed'""",
    "DROP TABLE bench_orders, bench_lines, bench_totals",
]


def _events_values() -> str:
    return ", ".join(f"('{kind}', '{kind_type}', {seconds}, '{detail}')"
                     for kind, kind_type, seconds, detail in EVENTS)


def fill(conn: Connection, *, orders: int, days: int, end: dt.datetime) -> dict[str, int]:
    """Write the history (one transaction per statement's table); returns row counts."""
    params: dict[str, Any] = {"orders": orders, "days": days,
                              "start": end - dt.timedelta(days=days),
                              "adjectives": ADJECTIVES, "nouns": NOUNS}
    for statement in STATEMENTS:
        sql = statement.replace("{events}", _events_values())
        conn.execute(text(sql), params)
        conn.commit()
    # As autovacuum would have left a live shop's tables: statistics and visibility maps.
    conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    return {table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608
            for table in ("products", "orders", "order_lines", "order_events", "payments",
                          "refunds")}
