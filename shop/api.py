"""The HTTP API: ``uvicorn shop.api:app``."""

from __future__ import annotations

from fastapi import FastAPI

from shop import errors, health
from shop.limits import WEBHOOK_BODY, BodyLimit
from shop.orders import admin as orders_admin
from shop.orders import admin_pages, webhooks
from shop.orders import router as orders_router
from shop.reports import router as reports_router


def create_app() -> FastAPI:
    """Build the app: routers, the admin pages, error handlers, the body-size guard."""
    app = FastAPI(title="shop", version="0.1.0",
                  description="Checkout, admin and webhook API of the shop order workflow.")
    errors.install(app)
    app.include_router(health.router)
    app.include_router(orders_router.router)
    app.include_router(orders_admin.router)
    admin_pages.install(app)
    app.include_router(webhooks.router)
    app.include_router(reports_router.router)
    app.add_middleware(BodyLimit, overrides={"/webhooks/": WEBHOOK_BODY})
    return app


app = create_app()
