"""Typed FastAPI dependencies shared by the routers."""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, HTTPException
from sqlalchemy.orm import Session

from shop.config import Settings, get_settings
from shop.db import session_scope


def get_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _presented_token(authorization: str) -> str | None:
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


def require_admin(
    settings: SettingsDep, authorization: Annotated[str | None, Header()] = None,
) -> None:
    """Bearer (or Basic, any user) ``SHOP_ADMIN_TOKEN``, compared in constant time."""
    if settings.admin_token is None:
        raise HTTPException(503, "admin API disabled: SHOP_ADMIN_TOKEN is not set")
    token = _presented_token(authorization or "")
    expected = settings.admin_token.get_secret_value()
    if token is None or not secrets.compare_digest(token.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong admin token",
                            headers={"WWW-Authenticate": 'Bearer, Basic realm="shop admin"'})


AdminDep = Annotated[None, Depends(require_admin)]
