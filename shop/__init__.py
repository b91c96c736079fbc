"""shop: an idempotent e-commerce order workflow backend.

The Celery app lives in ``shop.celery`` (``celery -A shop`` finds it there).
"""
