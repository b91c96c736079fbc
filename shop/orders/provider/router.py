"""``POST /webhooks/stripe``: verify, record once, acknowledge; the work happens in a task."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from shop.db import session_scope
from shop.orders.provider import events as payment_events
from shop.payments.gateway import ProviderEvent, SignatureInvalid, verify_event
from shop.web.deps import SettingsDep
from shop.web.errors import ERROR_RESPONSES, ErrorOut, ShopHTTPError

log = logging.getLogger(__name__)
router = APIRouter(tags=["webhooks"], responses=ERROR_RESPONSES)


class WebhookAck(BaseModel):
    received: bool
    duplicate: bool


def _accept(event: ProviderEvent) -> bool:
    with session_scope() as session:
        return payment_events.accept(session, event=event)


@router.post(
    "/webhooks/stripe", response_model=WebhookAck,
    responses={400: {"model": ErrorOut, "description": "Bad, missing or stale signature"},
               503: {"model": ErrorOut,
                     "description": "Webhooks disabled: SHOP_STRIPE_WEBHOOK_SECRET is not set"}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"type": "object", "description": "A Stripe event"}}}}},
)
async def stripe_webhook(
    request: Request, settings: SettingsDep,
    stripe_signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None,
) -> WebhookAck:
    """A Stripe event, verified against ``SHOP_STRIPE_WEBHOOK_SECRET`` (300 s tolerance).

    Recorded once by its id and handled by a task; the same event again is a no-op.
    """
    secrets = settings.webhook_secrets
    if not secrets:
        raise HTTPException(503, "webhooks disabled: SHOP_STRIPE_WEBHOOK_SECRET is not set")
    body = await request.body()
    try:
        event = verify_event(body, stripe_signature, secrets)
    except SignatureInvalid as exc:
        log.warning("webhook refused: %s", exc)
        raise ShopHTTPError("the Stripe-Signature does not verify") from None
    new = await run_in_threadpool(_accept, event)
    return WebhookAck(received=True, duplicate=not new)
