"""Exports: a dataset written to a CSV, JSON Lines or XLSX file under DATA_DIR/exports.

The export task (queue ``data_sync``, leased) reads the records in key order, one keyset
page of EXPORT_BATCH_SIZE at a time, and writes each page before reading the next, so its
memory stays flat whatever the dataset's size (files/writers.py streams every format). It
reports progress after each page and looks for a cancel before the next. It writes to a
``.partial-`` file of its own and renames it to ``<export id><extension>`` only in the
transaction that records the export finished, after the fence: a run that lost its lease
(or was cancelled) never puts a file in place, and a cancelled or failed run removes its
partial file. A run after one that was killed starts the file again (earlier partial files
of the export are removed first; an export is rewritten whole, not resumed). A run after
one that finished finds the export done and its file there, and answers as it did.

The export's id is the task's id. ``exports.get_export`` (queue ``database``) is the read
the routes use: the export's row beside its task's ledger row.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from backend.constants import XLSX_MAX_DATA_ROWS, Queue, State, TaskName
from backend.db.models import Dataset, Export
from backend.db.models.base import utcnow
from backend.db.queries import data_sync as datasets
from backend.db.queries import exports as q
from backend.files import storage, writers
from backend.files.bounds import MAX_COLUMNS
from backend.runtime.context import LeaseLost, TaskCancelled, TaskContext
from backend.runtime.registry import Mode, task
from backend.schemas.exports import ExportOut


class ExportFailed(Exception):
    """The export cannot be made (no such dataset, too many rows for XLSX…): the message
    says why, for a person to read."""


@task(TaskName.EXPORT_DATASET, queue=Queue.DATA_SYNC)
async def export_dataset(
    ctx: TaskContext,
    dataset: str,
    format: str = "csv",
    encoding: str = "utf-8",
    columns: list[str] | None = None,
    filter: dict[str, Any] | None = None,
) -> dict[str, Any]:
    async with ctx.session() as session:
        done = await q.get_export(session, export_id=ctx.task_id)
    if (
        done is not None
        and done.state == State.SUCCESS
        and done.path
        and await asyncio.to_thread(Path(done.path).is_file)
    ):
        return _summary(done)  # a run after the one that finished: nothing to do
    now = utcnow()
    async with ctx.session() as session, session.begin():
        found = await datasets.get_dataset(session, name=dataset)
        if found is None:
            raise ExportFailed(f"no dataset named {dataset!r}")
        await q.start_export(
            session,
            id=ctx.task_id,
            dataset=dataset,
            format=format,
            encoding=encoding,
            columns=columns,
            filter=filter,
            created_at=now,
            # Provisional: a run that dies leaves a row the purge still finds.
            expires_at=now + _retention(ctx),
        )
        await ctx.hold(session)
    try:
        return await _export(ctx, dataset, format, encoding, columns, filter, found)
    except LeaseLost:
        raise  # the run is someone else's now: write nothing
    except TaskCancelled:
        await _ended(ctx, State.REVOKED)
        raise
    except Exception:
        await _ended(ctx, State.FAILURE)
        raise


def _retention(ctx: TaskContext) -> timedelta:
    return timedelta(hours=ctx.settings.export_retention_hours)


async def _ended(ctx: TaskContext, state: str) -> None:
    """Best effort: the row says how the export ended (readers ask the ledger first)."""
    with contextlib.suppress(Exception):
        async with ctx.session() as session, session.begin():
            await q.end_export(session, export_id=ctx.task_id, state=state)


async def _export(
    ctx: TaskContext,
    dataset: str,
    fmt: str,
    encoding: str,
    columns: list[str] | None,
    where: dict[str, Any] | None,
    found: Dataset,
) -> dict[str, Any]:
    async with ctx.session() as session:
        header = columns or await q.dataset_columns(
            session, dataset=dataset, known=found.columns, limit=MAX_COLUMNS + 1
        )
        total = await q.count_records(session, dataset=dataset, where=where)
    if len(header) > MAX_COLUMNS:
        raise ExportFailed(
            f"the records have more than {MAX_COLUMNS} different columns: name the ones to export"
        )
    header = header or list(found.key_columns)
    if fmt == "xlsx" and total > XLSX_MAX_DATA_ROWS:
        raise ExportFailed(
            f"{total:,} records do not fit in a worksheet (at most {XLSX_MAX_DATA_ROWS:,} "
            "rows below the header): export CSV or JSON Lines, or filter"
        )
    directory = storage.exports_dir(ctx.settings.data_dir)
    extension = writers.EXTENSIONS[fmt]
    partial = directory / f"{storage.PARTIAL_PREFIX}{ctx.task_id}-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(_prepare, directory, ctx.task_id)
    writer = await asyncio.to_thread(
        writers.open_writer, fmt, partial, encoding=encoding, columns=header, title=dataset
    )
    closed = False
    try:
        await ctx.progress(0, total, f"0 of {total:,} records written")
        after: str | None = None
        written = 0
        batch = ctx.settings.export_batch_size
        while True:
            await ctx.checkpoint()
            async with ctx.session() as session:
                page = await q.records_after(
                    session, dataset=dataset, after=after, where=where, limit=batch
                )
            if not page:
                break
            await asyncio.to_thread(writer.write, [record.data for record in page])
            after = page[-1].key
            written += len(page)
            await ctx.progress(
                written, max(total, written), f"{written:,} of {total:,} records written"
            )
        await asyncio.to_thread(writer.close)
        closed = True
        size = (await asyncio.to_thread(partial.stat)).st_size
        final = directory / f"{ctx.task_id}{extension}"
        finished = utcnow()
        async with ctx.session() as session, session.begin():
            recorded = await q.finish_export(
                session,
                export_id=ctx.task_id,
                state=State.SUCCESS,
                path=str(final),
                rows=written,
                bytes=size,
                columns=header,
                finished_at=finished,
                expires_at=finished + _retention(ctx),
            )
            if not recorded:  # the purge took the row: the export outlived its retention
                raise ExportFailed(
                    "the export ran longer than EXPORT_RETENTION_HOURS and was purged meanwhile"
                )
            await ctx.hold(session)
            # In place only once the fence passed; if the commit then fails, the run ends
            # in error and a later run writes the file again.
            await asyncio.to_thread(os.replace, partial, final)
        async with ctx.session() as session:
            export = await q.get_export(session, export_id=ctx.task_id)
        assert export is not None
        return _summary(export)
    finally:
        if not closed:
            await asyncio.to_thread(writer.abort)
        await asyncio.to_thread(partial.unlink, missing_ok=True)


def _prepare(directory: Path, export_id: str) -> None:
    """The folder, without the partial files of earlier runs of this export (killed, or
    left behind when their lease passed to this run)."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob(f"{storage.PARTIAL_PREFIX}{export_id}-*"):
        old.unlink(missing_ok=True)


def _summary(export: Export) -> dict[str, Any]:
    return {
        "export_id": export.id,
        "dataset": export.dataset,
        "format": export.format,
        "encoding": export.encoding,
        "columns": export.columns,
        "rows": export.rows,
        "bytes": export.bytes,
        "expires_at": export.expires_at.isoformat() if export.expires_at else None,
        "download": f"/api/exports/{export.id}/download",
    }


@task(TaskName.GET_EXPORT, queue=Queue.DATABASE, mode=Mode.ATOMIC, notify=False)
async def get_export(ctx: TaskContext, export_id: str) -> dict[str, Any] | None:
    """The export as the routes describe it, and its file's path (for the download), or
    None when no export has this id."""
    async with ctx.session() as session:
        export = await q.get_export(session, export_id=export_id)
        run = await q.get_run(session, task_id=export_id)
    if run is not None and run.name != TaskName.EXPORT_DATASET:
        run = None  # a task id, but not an export's
    if export is None and run is None:
        return None
    described = ExportOut.of(export, run, utcnow())
    path = export.path if export is not None and described.download else None
    return {"export": described.model_dump(mode="json"), "path": path}
