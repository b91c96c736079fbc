"""Admin routes of the orders domain: the catalogue."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from shop.deps import AdminDep, SessionDep
from shop.errors import ADMIN_RESPONSES, ERROR_RESPONSES
from shop.orders import service
from shop.orders.schemas import ProductIn, ProductOut

router = APIRouter(prefix="/admin", tags=["admin"],
                   responses={**ERROR_RESPONSES, **ADMIN_RESPONSES})

SkuPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


@router.put("/products/{sku}", response_model=ProductOut, responses={
    200: {"description": "Updated"}, 201: {"model": ProductOut, "description": "Created"}})
def put_product(sku: SkuPath, body: ProductIn, session: SessionDep, response: Response,
                _: AdminDep) -> ProductOut:
    """Create or update a product; ``stock`` sets on-hand units."""
    product, created = service.put_product(session, sku=sku, data=body)
    response.status_code = 201 if created else 200
    return product
