"""The table behind case 5's reference endpoint (``bench.app``: ``POST /bench/insert``),
created by the bench in its own database, never by the shop's migrations."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, MetaData, String, Table, func
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = MetaData()
BARE = Table("bench_bare", metadata,
             Column("id", UUID(as_uuid=True), primary_key=True),
             Column("email", String(320)),
             Column("body", JSONB),
             Column("created_at", DateTime(timezone=True), server_default=func.now()))
