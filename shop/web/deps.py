"""Typed FastAPI dependencies shared by the routers."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import (
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)
from sqlalchemy.orm import Session

from shop.config import Settings, get_settings
from shop.db import session_scope
from shop.web import csrf

API_ACTOR = "api"


def get_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

_bearer = HTTPBearer(auto_error=False, scheme_name="adminToken",
                     description="`Authorization: Bearer $SHOP_ADMIN_TOKEN`")
_basic = HTTPBasic(auto_error=False, scheme_name="adminBasic", realm="shop admin",
                   description="Any user name, with `SHOP_ADMIN_TOKEN` as the password "
                               "(for the browser pages)")


AdminBearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
AdminBasic = Annotated[HTTPBasicCredentials | None, Depends(_basic)]
BASIC_CHALLENGE = 'Basic realm="shop admin"'
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def admin_actor(settings: Settings, bearer: HTTPAuthorizationCredentials | None,
                basic: HTTPBasicCredentials | None, *,
                challenge: str = f"Bearer, {BASIC_CHALLENGE}") -> str:
    """Bearer (or Basic, any user) ``SHOP_ADMIN_TOKEN``, compared in constant time.

    Returns who is acting: the Basic user name, or ``api`` for the bearer token.
    """
    if settings.admin_token is None:
        raise HTTPException(503, "admin API disabled: SHOP_ADMIN_TOKEN is not set")
    expected = settings.admin_token.get_secret_value().encode()
    presented, actor = (bearer.credentials, API_ACTOR) if bearer is not None else (
        (basic.password, basic.username or "admin") if basic is not None else (None, ""))
    if presented is None or not secrets.compare_digest(presented.encode(), expected):
        raise HTTPException(401, "missing or wrong admin token",
                            headers={"WWW-Authenticate": challenge})
    return actor[:100]


def require_admin(request: Request, settings: SettingsDep, bearer: AdminBearer,
                  basic: AdminBasic) -> str:
    """The admin API's door: ``admin_actor``, and a change made with a browser's Basic
    credentials must not come from another site's page (``shop.web.csrf``)."""
    actor = admin_actor(settings, bearer, basic)
    if (bearer is None and request.method not in SAFE_METHODS
            and not csrf.same_origin(request.headers)):
        raise HTTPException(403, "refused: a browser request from another site")
    return actor


AdminDep = Annotated[str, Depends(require_admin)]
