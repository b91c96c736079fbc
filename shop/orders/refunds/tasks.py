"""The line refund's task: the request's id in, ``converge.refund_lines`` called.

Declared from its entry in the step table (``workflow.table``), like every task; its
give-up puts the request on the attention list (``service.give_up``).
"""

from __future__ import annotations

import uuid

from celery import Task, shared_task

from shop.messaging.runner import run_step
from shop.orders.provider import converge
from shop.orders.refunds import service
from shop.orders.workflow.table import TaskName
from shop.orders.workflow.tasks import options, owner
from shop.payments.providers import get_gateway


@shared_task(**options(TaskName.REFUND_LINES))
def refund_lines_task(self: Task, refund_id: str) -> None:
    gateway, lease_owner, request_id = get_gateway(), owner(self), uuid.UUID(refund_id)
    run_step(self, lambda s: converge.refund_lines(s, refund_id=request_id, gateway=gateway,
                                                   owner=lease_owner),
             lambda s, exc: service.give_up(s, refund_id=request_id, error=exc))
