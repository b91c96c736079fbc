"""The HTTP API: ``uvicorn shop.api:app``."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shop import logs, tracing
from shop.celery import install_publisher
from shop.config import get_settings
from shop.orders import router as orders_router
from shop.orders.admin import pages as admin_pages
from shop.orders.admin import router as orders_admin
from shop.orders.provider import router as webhooks
from shop.orders.refunds import pages as refund_pages
from shop.orders.refunds import router as refunds_router
from shop.reports import router as reports_router
from shop.web import errors, health
from shop.web.http_metrics import HttpMetrics
from shop.web.limits import WEBHOOK_BODY, BodyLimit, CheckoutRateLimit


class RequestIds:
    """Every request gets an id: the caller's ``X-Request-ID`` if it is sane, else a new
    one. Logs carry it, the messages the request causes carry it on, and the response
    returns it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers") or []).get(b"x-request-id", b"")
        request_id = logs.new_request_id(sent.decode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        tracing.annotate(**{"shop.request_id": request_id})  # on the request's span
        # Left bound if the app raises: the 500's lines (uvicorn's traceback and access
        # line) come after, outside this middleware but in the request's own task.
        bound = logs.REQUEST_ID.set(request_id)
        await self.app(scope, receive, send_with_id)
        logs.REQUEST_ID.reset(bound)


def create_app() -> FastAPI:
    """Build the app: routers, the admin pages, error handlers, the body-size guard.

    With ``SHOP_TRACING`` on, FastAPI's own telemetry makes each request's server span
    (``shop.tracing``)."""
    settings = get_settings()
    tracing.configure(settings, "shop-api")
    app = FastAPI(title="shop", version="0.1.0",
                  description="Checkout, admin and webhook API of the shop order workflow.")
    errors.install(app)
    app.include_router(health.router)
    app.include_router(orders_router.router)
    app.include_router(orders_admin.router)
    app.include_router(refunds_router.router)
    app.include_router(refund_pages.router)  # before the pages' generic action routes
    admin_pages.install(app)
    app.include_router(webhooks.router)
    app.include_router(reports_router.router)
    app.add_middleware(BodyLimit, overrides={"/webhooks/": WEBHOOK_BODY})
    app.add_middleware(CheckoutRateLimit, rate=settings.checkout_rate,
                       burst=settings.checkout_burst,
                       trust_forwarded=settings.trust_forwarded_for,
                       trusted_hops=settings.trusted_proxy_hops)
    app.add_middleware(RequestIds)
    app.add_middleware(HttpMetrics)  # outermost: the limits' 429s and 413s count too
    logs.configure(settings.log_format)
    install_publisher()  # checkouts publish their first step right after the commit
    return app


app = create_app()
