"""The fulfillment emails' tasks: ids in, one use case called (``emails``)."""

from __future__ import annotations

import uuid
from functools import partial

from celery import Task, shared_task

from shop.config import get_settings
from shop.messaging.runner import run_step
from shop.notifications.mailer import build_mailer
from shop.orders.fulfillment import emails
from shop.orders.workflow.table import TaskName
from shop.orders.workflow.tasks import _give_up, options


@shared_task(**options(TaskName.SEND_SHIPMENT_EMAIL))
def send_shipment_email_task(self: Task, order_id: str, shipment_id: str) -> None:
    settings = get_settings()
    run_step(self, lambda s: emails.send_shipment_email(
        s, order_id=uuid.UUID(order_id), shipment_id=shipment_id,
        mailer=build_mailer(settings), sender=settings.mail_from),
        partial(_give_up, self, TaskName.SEND_SHIPMENT_EMAIL, order_id))


@shared_task(**options(TaskName.SEND_LINE_REFUND_EMAIL))
def send_line_refund_email_task(self: Task, order_id: str, message_id: str) -> None:
    settings = get_settings()
    run_step(self, lambda s: emails.send_line_refund_email(
        s, order_id=uuid.UUID(order_id), message_id=message_id,
        mailer=build_mailer(settings), sender=settings.mail_from),
        partial(_give_up, self, TaskName.SEND_LINE_REFUND_EMAIL, order_id))
