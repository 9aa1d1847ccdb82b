"""Notification queries: record once per (task, state), list newest first, purge."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from backend.db.models import Notification

PURGE_BATCH = 5_000


async def record(session: AsyncSession, values: dict[str, Any]) -> Notification | None:
    """Insert the notification; None when this (task, state) was already recorded."""
    dialect = session.get_bind().dialect.name
    insert = (pg_insert if dialect == "postgresql" else sqlite_insert)(Notification)
    statement = insert.values(**values).on_conflict_do_nothing().returning(Notification.id)
    new_id = await session.scalar(statement)
    if new_id is None:
        return None
    return await session.get(Notification, new_id)


async def latest(
    session: AsyncSession, *, limit: int, state: str | None = None
) -> list[Notification]:
    query = select(Notification).order_by(Notification.id.desc()).limit(limit)
    if state:
        query = query.where(Notification.state == state)
    return list((await session.scalars(query)).all())


async def purge_older_than(
    session: AsyncSession, *, cutoff: datetime, batch: int = PURGE_BATCH
) -> int:
    ids = select(Notification.id).where(Notification.created_at < cutoff).limit(batch)
    result = await session.execute(
        delete(Notification).where(Notification.id.in_(ids.scalar_subquery()))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
