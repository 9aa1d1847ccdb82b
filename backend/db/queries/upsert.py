"""The dialect's INSERT, for upserts (``ON CONFLICT``): SQLAlchemy spells it per dialect."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession


def insert_for(session: AsyncSession) -> Any:
    """PostgreSQL's or SQLite's ``insert`` for the database ``session`` is bound to."""
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
