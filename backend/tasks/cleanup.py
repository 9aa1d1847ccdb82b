"""Scheduled work on the ``scheduled`` queue: the recovery sweep and the purges.

Each purge works in batches (one short transaction each, a checkpoint between them) and
is idempotent, so a firing that is redelivered or runs twice deletes nothing extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
from sqlalchemy.ext.asyncio import AsyncSession

from backend.constants import Queue, TaskName
from backend.db.models.base import utcnow
from backend.db.queries import conversations, exports, notifications, retention
from backend.db.queries import data_sync as files
from backend.files import storage
from backend.runtime import recovery
from backend.runtime.broker import Broker
from backend.runtime.celery_config import create_celery_app
from backend.runtime.context import TaskContext
from backend.runtime.events import Announcer
from backend.runtime.registry import task

RESULT_KEY = "celery-task-meta-{}"  # Celery's Redis result key for a task id


async def purge_in_batches(
    ctx: TaskContext, purge: Callable[[AsyncSession], Awaitable[int]]
) -> int:
    """One short transaction per batch and a checkpoint between batches, until one deletes
    nothing; the total deleted."""
    deleted = 0
    while True:
        await ctx.checkpoint()
        async with ctx.session() as session, session.begin():
            n = await purge(session)
        deleted += n
        if not n:
            return deleted


@task(TaskName.RECOVER, queue=Queue.SCHEDULED, scheduled=True, submittable=True)
async def recover(ctx: TaskContext) -> dict[str, Any]:
    """The recovery sweep (runtime/recovery.py), run by beat so orphans are found with no
    API up. It re-sends through Celery: a Celery app made from the body's own settings
    (it only publishes), never a whole Runtime."""
    broker = Broker(ctx.settings, create_celery_app(ctx.settings))
    try:
        report = await recovery.sweep(
            sessions=ctx.session_factory,
            settings=ctx.settings,
            broker=broker,
            dispatch=recovery.broker_dispatch(broker, ctx.session_factory),
            announcer=Announcer(broker),
        )
    finally:
        await broker.close()
    return {"redispatched": report.redispatched, "failed": report.failed}


@task(TaskName.PURGE_CONVERSATIONS, queue=Queue.SCHEDULED, scheduled=True, submittable=True)
async def purge_conversations(ctx: TaskContext) -> dict[str, Any]:
    cutoff = utcnow() - timedelta(days=ctx.settings.conversation_retention_days)
    deleted = await purge_in_batches(
        ctx, lambda session: conversations.purge_older_than(session, cutoff=cutoff)
    )
    return {"deleted_messages": deleted, "cutoff": cutoff.isoformat()}


@task(TaskName.PURGE_TASK_RUNS, queue=Queue.SCHEDULED, scheduled=True, submittable=True)
async def purge_task_runs(ctx: TaskContext) -> dict[str, Any]:
    """Finished ledger rows, their notifications and rejected-row records past retention,
    and the Celery results Redis still holds for those tasks (best effort: they expire)."""
    settings = ctx.settings
    runs_cutoff = utcnow() - timedelta(days=settings.task_run_retention_days)
    errors_cutoff = utcnow() - timedelta(days=settings.sync_error_retention_days)
    results = redis.Redis.from_url(
        settings.celery_result_backend, socket_timeout=2, socket_connect_timeout=1
    )
    runs = 0
    longest = 0.0
    try:
        while True:
            await ctx.checkpoint()
            started = time.perf_counter()
            async with ctx.session() as session, session.begin():
                ids = await retention.purge_finished_task_runs(session, cutoff=runs_cutoff)
            longest = max(longest, time.perf_counter() - started)
            runs += len(ids)
            if ids:
                with contextlib.suppress(redis.RedisError):
                    results.delete(*(RESULT_KEY.format(i) for i in ids))
            else:
                break
        errors = await purge_in_batches(
            ctx, lambda session: retention.purge_sync_errors(session, cutoff=errors_cutoff)
        )
        notes = await purge_in_batches(
            ctx, lambda session: notifications.purge_older_than(session, cutoff=runs_cutoff)
        )
    finally:
        results.close()
    return {
        "deleted_task_runs": runs,
        "deleted_sync_errors": errors,
        "deleted_notifications": notes,
        "longest_transaction_ms": round(longest * 1000, 1),
    }


@task(TaskName.SWEEP_UPLOADS, queue=Queue.SCHEDULED, scheduled=True, submittable=True)
async def sweep_uploads(ctx: TaskContext) -> dict[str, Any]:
    """Stored uploads nobody registered (a refused upload whose worker died before removing
    it, an inbox copy of a killed scan) and ``.partial-`` files of killed writers.

    The referenced set is read before the directory is listed, so a file registered
    meanwhile is young and is kept by the age limit, never judged unreferenced."""
    async with ctx.session() as session:
        referenced = await files.stored_paths(session)
    swept = await asyncio.to_thread(
        storage.sweep,
        ctx.settings.data_dir,
        referenced=referenced,
        older_than=ctx.settings.upload_sweep_age_seconds,
    )
    return {"deleted_partials": swept.partials, "deleted_unreferenced": swept.unreferenced}


@task(TaskName.PURGE_EXPORTS, queue=Queue.SCHEDULED, scheduled=True, submittable=True)
async def purge_exports(ctx: TaskContext) -> dict[str, Any]:
    """Exports past their expiry (EXPORT_RETENTION_HOURS after they finished, or after they
    started for one whose run died): the file first, then the row, a batch at a time, so a
    purge that stops half-way leaves at worst a row whose file is gone, which the next
    purge removes. Then files in the exports folder that no export owns (a killed run's
    ``.partial-`` file, a finished file whose row is gone), once untouched for longer than
    a run can take."""
    deleted = files_removed = 0
    while True:
        await ctx.checkpoint()
        async with ctx.session() as session:
            batch = await exports.expired(session, now=utcnow())
        if not batch:
            break
        for _, path in batch:
            if path:
                removed = await asyncio.to_thread(_unlink, Path(path))
                files_removed += removed
        async with ctx.session() as session, session.begin():
            deleted += await exports.delete_exports(
                session, ids=[export_id for export_id, _ in batch]
            )
    older_than = max(float(ctx.settings.task_time_limit), 3600.0)
    stale = await asyncio.to_thread(
        storage.stale_exports, ctx.settings.data_dir, older_than=older_than
    )
    owners = {p: storage.export_id_of(p) for p in stale}
    async with ctx.session() as session:
        known = await exports.known_ids(session, ids=[i for i in owners.values() if i])
    for path, owner in owners.items():
        if owner is None or owner not in known:
            files_removed += await asyncio.to_thread(_unlink, path)
    return {"deleted_exports": deleted, "deleted_files": files_removed}


def _unlink(path: Path) -> int:
    try:
        path.unlink()
    except FileNotFoundError:
        return 0  # removed meanwhile (a purge running twice): nothing to do
    return 1
