"""The Celery app (filled in by the workflow)."""

from celery import Celery

app = Celery("shop")
