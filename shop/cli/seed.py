"""The demo catalogue loaded by ``shop seed``."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shop.orders.models import Product

DEMO_CATALOGUE: list[tuple[str, str, int, int]] = [
    ("MUG-BLUE", "Blue enamel mug", 1500, 40),
    ("MUG-RED", "Red enamel mug", 1500, 40),
    ("TEE-S", "Logo T-shirt, small", 2500, 25),
    ("TEE-M", "Logo T-shirt, medium", 2500, 30),
    ("TEE-L", "Logo T-shirt, large", 2500, 20),
    ("CAP-BLK", "Black cap", 1800, 15),
    ("TOTE-NAT", "Canvas tote bag", 1200, 50),
    ("NOTE-A5", "A5 dotted notebook", 900, 100),
    ("PEN-BRASS", "Brass pen", 3500, 10),
    ("STICKER-PACK", "Sticker pack", 400, 200),
]


def seed_catalogue(session: Session, *, currency: str = "USD") -> int:
    """Load the demo catalogue into an empty product table; returns rows added."""
    if session.scalar(select(func.count()).select_from(Product)):
        return 0
    session.add_all(Product(sku=sku, name=name, price=price, currency=currency, on_hand=stock,
                            reserved=0) for sku, name, price, stock in DEMO_CATALOGUE)
    session.commit()
    return len(DEMO_CATALOGUE)
