"""The API's error shape and handlers: every error is ``ErrorOut`` JSON, never a 500 for input.

    ShopHTTPError
    ├── NotFound            404
    └── Conflict            409
    InvalidRequest          422, names each field (raised by use cases)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class FieldError(BaseModel):
    field: str
    message: str
    type: str


class ErrorOut(BaseModel):
    """Every error the API answers has this shape."""

    error: str = Field(description="a stable code, e.g. validation_failed, not_found")
    message: str
    fields: list[FieldError] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FieldProblem:
    field: str
    message: str
    type: str


class InvalidRequest(Exception):
    """Input that is well-formed but wrong (unknown SKU, mixed currencies, …)."""

    def __init__(self, problems: Sequence[FieldProblem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = list(problems)


def _responses(**texts: str) -> dict[int | str, dict[str, Any]]:
    return {int(code.removeprefix("s")): {"model": ErrorOut, "description": text}
            for code, text in texts.items()}


# What every route may answer, and what the admin routes add.
ERROR_RESPONSES = _responses(
    s400="A body that is not JSON",
    s422="Invalid input, or a body over 64 KiB; `fields` names each problem")
ADMIN_RESPONSES = _responses(
    s401="Missing or wrong admin token",
    s503="The admin API is disabled: SHOP_ADMIN_TOKEN is not set")
CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
         405: "method_not_allowed", 409: "conflict", 413: "too_large", 503: "unavailable"}


class ShopHTTPError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ShopHTTPError):
    status = 404
    code = "not_found"


class Conflict(ShopHTTPError):
    status = 409
    code = "conflict"


def error_response(status: int, code: str, message: str,
                   fields: list[FieldError] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorOut(error=code, message=message, fields=fields or [])
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _field_name(loc: tuple[int | str, ...]) -> str:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = [FieldError(field=_field_name(tuple(e["loc"])), message=e["msg"], type=e["type"])
              for e in exc.errors()]
    return error_response(422, "validation_failed", "The request has invalid fields", fields)


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidRequest)
    fields = [FieldError(field=p.field, message=p.message, type=p.type) for p in exc.problems]
    return error_response(422, "validation_failed", str(exc), fields)


async def _shop(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ShopHTTPError)
    return error_response(exc.status, exc.code, exc.message)


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, CODES.get(exc.status_code, "error"), str(exc.detail),
                          headers=dict(exc.headers or {}))


async def _database(_: Request, exc: Exception) -> JSONResponse:
    """The database went away (a restart, a failover, a killed connection): nothing
    was committed, or a committed checkout replays under its Idempotency-Key, so the
    client is told to try again: 503, not 500. Anything else is a bug and stays one."""
    assert isinstance(exc, DBAPIError)
    if not exc.connection_invalidated and not _is_disconnect(exc):
        raise exc
    log.warning("database unavailable: %s", type(exc.orig).__name__)
    return error_response(503, "unavailable", "the shop is briefly unavailable; try again",
                          headers={"Retry-After": "5"})


def _is_disconnect(exc: DBAPIError) -> bool:
    # psycopg's OperationalError: the server refused, went away or was shut down.
    return isinstance(exc.orig, psycopg.OperationalError)


def _errors_are_json(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI files a route's error models under the route's own media type; a page
    (``text/html``) still answers its errors as ``ErrorOut`` JSON, so say so."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if int(code) >= 400 and "text/html" in content:
                    response["content"] = {"application/json": content.pop("text/html")}
    return schema


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the ``ErrorOut`` shape."""
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _errors_are_json(build_schema())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(InvalidRequest, _invalid)
    app.add_exception_handler(ShopHTTPError, _shop)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(DBAPIError, _database)
