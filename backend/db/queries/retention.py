"""Batched purges of what is past its retention: finished ledger rows and old rejected-row
records. Each call deletes one batch, so a large purge never holds a long lock."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.constants import FINAL_STATES
from backend.db.models import SyncError, TaskRun

PURGE_BATCH = 5_000


async def purge_finished_task_runs(
    session: AsyncSession, *, cutoff: datetime, batch: int = PURGE_BATCH
) -> list[str]:
    """Delete one batch of final ledger rows that finished before ``cutoff``; their ids."""
    ids = list(
        (
            await session.scalars(
                select(TaskRun.id)
                .where(TaskRun.state.in_(FINAL_STATES), TaskRun.finished_at < cutoff)
                .limit(batch)
            )
        ).all()
    )
    if ids:
        await session.execute(delete(TaskRun).where(TaskRun.id.in_(ids)))
    return ids


async def purge_sync_errors(
    session: AsyncSession, *, cutoff: datetime, batch: int = PURGE_BATCH
) -> int:
    ids = select(SyncError.id).where(SyncError.created_at < cutoff).limit(batch)
    result = await session.execute(delete(SyncError).where(SyncError.id.in_(ids.scalar_subquery())))
    return int(result.rowcount)  # type: ignore[attr-defined]
