"""Provider sync's tasks: a webhook event's handling, reconciliation, 3-D Secure expiry.

Declared from their entries in the step table (``workflow.table``), like every task.
"""

from __future__ import annotations

from celery import Task, shared_task

from shop.config import get_settings
from shop.messaging.runner import run_step
from shop.orders.provider import events, reconcile
from shop.orders.workflow.table import TaskName
from shop.orders.workflow.tasks import options, owner
from shop.payments.providers import get_gateway


@shared_task(**options(TaskName.HANDLE_PAYMENT_EVENT))
def handle_payment_event_task(self: Task, event_id: str) -> None:
    gateway, lease_owner = get_gateway(), owner(self)
    run_step(self, lambda s: events.handle(s, event_id=event_id, gateway=gateway,
                                           owner=lease_owner),
             lambda s, exc: events.defer(s, event_id=event_id, error=str(exc)))


@shared_task(**options(TaskName.RECONCILE))
def reconcile_payments_task(self: Task) -> None:
    gateway = get_gateway()
    run_step(self, lambda s: reconcile.reconcile(s, gateway=gateway, owner=owner(self)),
             lambda _s, _e: None)


@shared_task(**options(TaskName.EXPIRE_AUTHENTICATIONS))
def expire_authentications_task(self: Task) -> None:
    gateway, timeout = get_gateway(), get_settings().requires_action_timeout
    run_step(self, lambda s: events.expire_authentications(
        s, gateway=gateway, owner=owner(self), older_than=timeout), lambda _s, _e: None)
