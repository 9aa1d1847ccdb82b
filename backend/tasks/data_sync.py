"""Data-sync tasks: register files, sync them into datasets, and read the results back.

Syncs (and the inbox scan) run on the ``data_sync`` queue; registration and the short
reads run on ``database`` so they never wait behind a long sync. A sync is exactly-once
in effect: records are upserted by (dataset, key), and each batch commits together with
its checkpoint, so a sync re-run after a kill resumes after its last committed batch.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from stat import S_ISREG
from typing import Any

from sqlalchemy.exc import IntegrityError

from backend.constants import COLUMN_PATTERN, DATASET_PATTERN, Queue, State, TaskName
from backend.db.models import SyncError, SyncFile
from backend.db.models.base import utcnow
from backend.db.queries import data_sync as q
from backend.db.rows import Batch, RowShape
from backend.files import readers, storage
from backend.files.readers import BadFile
from backend.runtime import metrics
from backend.runtime.context import TaskCancelled, TaskContext
from backend.runtime.registry import Mode, task
from backend.schemas.data_sync import DatasetOut, FileOut, RecordOut, RecordsPage

log = logging.getLogger(__name__)

KEYS_FILE = ".keys"
INBOX_SETTLE_SECONDS = 2.0


# -- registering --------------------------------------------------------------------------


async def _register(
    ctx: TaskContext, stored: storage.StoredFile, dataset: str, key_columns: list[str]
) -> dict[str, Any]:
    try:
        return await _record(ctx, stored, dataset, key_columns)
    except IntegrityError:
        # Another registration of the same bytes (an upload, a concurrent scan) committed
        # between our look-up and our insert.
        async with ctx.session() as session:
            first = await q.file_by_checksum(session, dataset=dataset, checksum=stored.checksum)
        if first is None:
            raise
        return _settle_existing(first, stored)


async def _record(
    ctx: TaskContext, stored: storage.StoredFile, dataset: str, key_columns: list[str]
) -> dict[str, Any]:
    """Record a stored file; the same bytes again give the first file (duplicate).

    Safe to run twice: a row with these bytes that points at *this* stored file is this
    registration's own earlier run (a redelivery after it committed), so it answers as
    that run did and keeps the file. Only a copy of bytes already registered from another
    file is a duplicate, and only that copy is removed.
    """
    async with ctx.session() as session, session.begin():
        first = await q.file_by_checksum(session, dataset=dataset, checksum=stored.checksum)
        if first is not None:
            return _settle_existing(first, stored)
        if not await asyncio.to_thread(stored.path.is_file):
            raise BadFile(f"the stored file {stored.path.name} is missing")
        fmt = readers.detect_format(stored.original_name, await _head(stored.path))
        existing = await q.get_dataset(session, name=dataset)
        if existing is None and not key_columns:
            raise BadFile(f"dataset {dataset!r} is new: give its key_columns")
        if existing is not None and key_columns and existing.key_columns != key_columns:
            raise BadFile(
                f"dataset {dataset!r} is keyed by {existing.key_columns}, not {key_columns}"
            )
        if existing is None:
            await q.ensure_dataset(session, name=dataset, key_columns=key_columns)
        row = await q.add_file(
            session,
            original_name=stored.original_name,
            stored_path=str(stored.path),
            format=fmt,
            size=stored.size,
            checksum=stored.checksum,
            dataset=dataset,
            registered_at=utcnow(),
        )
        return _registered(row, duplicate=False)


async def _head(path: Path) -> bytes:
    def read() -> bytes:
        with path.open("rb") as f:
            return f.read(8)

    return await asyncio.to_thread(read)


def _registered(row: SyncFile, *, duplicate: bool) -> dict[str, Any]:
    return {"file_id": row.id, "duplicate": duplicate, "dataset": row.dataset, "format": row.format}


def _settle_existing(first: SyncFile, stored: storage.StoredFile) -> dict[str, Any]:
    """``first`` holds these bytes already: our own earlier run, or a true duplicate."""
    if Path(first.stored_path) == stored.path:
        return _registered(first, duplicate=False)
    stored.path.unlink(missing_ok=True)
    return _registered(first, duplicate=True)


@task(TaskName.REGISTER_FILE, queue=Queue.DATABASE, mode=Mode.ATOMIC)
async def register_file(
    ctx: TaskContext,
    stored_path: str,
    original_name: str,
    size: int,
    checksum: str,
    dataset: str,
    key_columns: list[str],
) -> dict[str, Any]:
    stored = storage.StoredFile(Path(stored_path), size, checksum, original_name)
    try:
        return await _register(ctx, stored, dataset, key_columns)
    except BadFile:
        # Refused (422): no row points at this upload and none ever will, so it goes now
        # rather than waiting for the sweep. A second run finds it gone and refuses again.
        if storage.is_upload(stored.path, data_dir=ctx.settings.data_dir):
            stored.path.unlink(missing_ok=True)
        raise


@task(TaskName.SCAN_INBOX, queue=Queue.SCHEDULED, scheduled=True, submittable=True)
async def scan_inbox(ctx: TaskContext) -> dict[str, Any]:
    """Register every settled file in ``DATA_DIR/inbox/<dataset>/``.

    A dataset folder may hold a ``.keys`` file (comma-separated key columns) for a new
    dataset; files that cannot be registered are moved to ``<dataset>/.rejected/``, and so
    are the files of a folder whose name is not a dataset name. A file leaves the inbox
    only once its registration committed (see ``storage.copy_in``); two scans at once
    register it once, the second finding it a duplicate or gone.
    """
    data_dir = ctx.settings.data_dir
    inbox = storage.inbox_dir(data_dir)
    report: dict[str, list[Any]] = {"registered": [], "duplicates": [], "rejected": []}
    if not inbox.is_dir():
        return report
    now = utcnow().timestamp()
    for folder in sorted(p for p in inbox.iterdir() if p.is_dir()):
        valid = re.match(DATASET_PATTERN, folder.name) is not None
        keys = _inbox_keys(folder)
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            try:
                if not path.is_file() or now - path.stat().st_mtime < INBOX_SETTLE_SECONDS:
                    continue  # not a file, or still being written
                await ctx.checkpoint()
                if not valid:
                    reason = f"{folder.name!r} is not a dataset name ({DATASET_PATTERN})"
                    _reject(path, reason, report)
                    continue
                await _scan_one(ctx, path, folder.name, keys, report)
            except FileNotFoundError:
                continue  # another scan took it meanwhile
    return report


def _inbox_keys(folder: Path) -> list[str]:
    keys_file = folder / KEYS_FILE
    if not keys_file.is_file():
        return []
    keys = [k.strip() for k in keys_file.read_text(errors="replace").split(",") if k.strip()]
    return [k for k in keys if re.match(COLUMN_PATTERN, k)][:20]


async def _scan_one(
    ctx: TaskContext, path: Path, dataset: str, keys: list[str], report: dict[str, list[Any]]
) -> None:
    stored = await asyncio.to_thread(storage.copy_in, path, data_dir=ctx.settings.data_dir)
    try:
        outcome = await _register(ctx, stored, dataset, keys)
    except BadFile as exc:
        stored.path.unlink(missing_ok=True)
        _reject(path, str(exc), report)
        return
    except BaseException:
        # Not the file's fault (the database blinked, a cancel): it stays in the inbox for
        # the next scan, and the copy goes.
        stored.path.unlink(missing_ok=True)
        raise
    await asyncio.to_thread(path.unlink, missing_ok=True)
    bucket = "duplicates" if outcome["duplicate"] else "registered"
    report[bucket].append({"name": path.name, "file_id": outcome["file_id"]})


def _reject(path: Path, reason: str, report: dict[str, list[Any]]) -> None:
    rejected = path.parent / ".rejected"
    rejected.mkdir(exist_ok=True)
    path.rename(rejected / path.name)
    report["rejected"].append({"name": path.name, "reason": reason})


# -- syncing ----------------------------------------------------------------------------


class FileBusy(BadFile):
    """Another sync of the same file is running; one sync per file at a time."""


Rows = Iterator[tuple[int, readers.Row | str]]


def _skip(rows: Rows, n: int) -> None:
    for _ in itertools.islice(rows, n):
        pass


@task(TaskName.SYNC_FILE, queue=Queue.DATA_SYNC)
async def sync_file(ctx: TaskContext, file_id: int) -> dict[str, Any]:
    settings = ctx.settings
    async with ctx.session() as session:
        f = await q.get_file(session, file_id=file_id)
        if f is None:
            raise BadFile(f"no file with id {file_id}")
        dataset = await q.get_dataset(session, name=f.dataset)
        checkpoint = await q.get_checkpoint(session, task_id=ctx.task_id)
    assert dataset is not None
    if f.last_sync_task_id == ctx.task_id and f.last_sync_state == State.SUCCESS:
        # This very task finished the sync already (a redelivery after its commit): answer
        # as it did, rather than read the file again and report every row as unchanged.
        async with ctx.session() as session:
            errors = await q.errors_for(session, file_id=f.id, limit=100)
        return _summary(f, q.Counts.of_file(f), errors)
    keys = list(dataset.key_columns)
    try:
        return await _sync(ctx, f, keys, checkpoint, settings.sync_batch_size)
    except FileBusy:
        raise  # the file is another sync's: leave its state alone
    except BadFile:
        await _set_state(ctx, file_id, State.FAILURE)
        raise
    except TaskCancelled:
        await _set_state(ctx, file_id, State.REVOKED)
        raise


async def _set_state(ctx: TaskContext, file_id: int, state: str) -> None:
    async with ctx.session() as session, session.begin():
        await q.set_file_state(session, file_id=file_id, state=state, task_id=ctx.task_id)


# Once a re-sync's batches come back mostly unchanged, it reads this many batches' rows at
# a time (still at most SYNC_BATCH_BYTES of JSON): whatever a batch costs beside its rows
# (the probe's statement, checkpoint, fence, commit and progress; the event loop waking for
# the reading thread) is then paid a quarter as often. Re-syncs of an unchanged
# 1,000,000-row file (/tmp harness on bench_sync's files, two runs each): JSON Lines
# 86,251-92,063 rows/s against 64,033-71,167 (PostgreSQL), 129,844-139,115 against
# 88,051-91,095 (SQLite); CSV on SQLite 178,788-193,688 against 135,543-148,211.
# Eight batches were no faster than four (70,087-81,860 rows/s on PostgreSQL).
PROBE_BATCHES = 4
FIRST_PROBE_ROWS = 1_000

# While a re-sync reads ahead, two batches of PROBE_BATCHES x SYNC_BATCH_SIZE rows are alive
# at once, each row a list and a tuple the collector tracks: at the worker's young threshold
# (runtime/worker.py GC_THRESHOLD, 10,000) a batch costs several young collections, and
# their survivors are scanned again by the older ones, with nothing to find (rows hold no
# cycles). In a re-sync of an unchanged 1,000,000-row CSV (a gc.callbacks timer in the
# worker): 183 young and 16 middle collections, 0.53 s of a 3.75 s loop, against one
# collection, 0.05 s, at 100,000; the reading thread's CPU fell from 2.49 s to 2.05 s.
READ_AHEAD_GC_YOUNG = 100_000


class _RarerCollections:
    """Raises the collector's young threshold from a sync's first read-ahead to the end of
    its batches, and puts back what it was when the last such sync of this process is done
    (syncs in the API's local executor may overlap, and the API's requests meanwhile
    collect less often too; a worker's pool process runs one at a time)."""

    def __init__(self) -> None:
        self.users = 0
        self.before = (0, 0, 0)  # the threshold to put back, read when the first enters

    def enter(self) -> None:
        if self.users == 0:
            self.before = gc.get_threshold()
            young, *older = self.before
            gc.set_threshold(max(young, READ_AHEAD_GC_YOUNG), *older)
        self.users += 1

    def leave(self) -> None:
        self.users -= 1
        if self.users == 0:
            gc.set_threshold(*self.before)


_rarer_collections = _RarerCollections()


async def _sync(
    ctx: TaskContext,
    f: SyncFile,
    keys: list[str],
    checkpoint: Any,
    batch_size: int,
) -> dict[str, Any]:
    async with ctx.session() as session, session.begin():
        holder = await q.take_file(session, file_id=f.id, task_id=ctx.task_id)
        if holder is not None:
            raise FileBusy(f"file {f.id} is being synced by task {holder}; sync it again later")
        if checkpoint is None:
            await q.clear_errors(session, file_id=f.id)
        await ctx.hold(session)
    path = Path(f.stored_path)
    stat = await asyncio.to_thread(_stat, path)
    if stat is None:
        raise BadFile(f"the stored file {path.name} is missing")
    # The whole-file pre-pass: a file that is not what it claims fails here, before any
    # row is written, so its dataset stays unchanged. Bytes that passed it before (the
    # stored file as it was then) pass again: a re-sync or a resumed sync starts from what
    # it found.
    info = _passed_before(f, stat)
    if info is None:
        limits = readers.XlsxLimits.of(ctx.settings)
        info = await asyncio.to_thread(readers.inspect, path, f.format, limits)
    missing = [k for k in keys if k not in info.columns]
    if missing and info.format != "jsonl":
        raise BadFile(
            f"the header row has no key column {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(info.columns[:20])}); is the first row a header?"
        )
    found = info.layout()
    new_layout = found | _identity(stat) if found is not None else None
    if new_layout == f.layout:
        new_layout = None  # kept already
    if info.columns or new_layout is not None:
        async with ctx.session() as session, session.begin():
            await q.note_columns(session, name=f.dataset, columns=info.columns)
            if new_layout is not None:
                await q.keep_layout(session, file_id=f.id, layout=new_layout)
            await ctx.hold(session)
    counts = q.Counts(**checkpoint.counts) if checkpoint is not None else q.Counts()
    # A file whose last sync succeeded is most likely synced again unchanged: probe from
    # its first batch on, and make that batch small, since it is read before anything
    # else can run beside it (the batches after it are read ahead). A wrong guess costs
    # that batch's probe, and the rows read ahead meanwhile (four batches' worth) are
    # then written as one batch; from there each batch's outcome sets the next one's way.
    mostly_unchanged = f.last_sync_state == State.SUCCESS
    first_batch = min(batch_size, FIRST_PROBE_ROWS) if mostly_unchanged else batch_size
    done = checkpoint.rows_done if checkpoint is not None else 0
    rows = readers.iter_rows(path, info)
    shape = RowShape(info.columns, keys)
    if done:
        await asyncio.to_thread(_skip, rows, done)  # resume after the last committed batch
        await ctx.progress(done, info.total_rows, f"resumed after row {done}")

    def read_batch(n: int = batch_size) -> Batch:
        return shape.next_batch(rows, n, ctx.settings.sync_batch_bytes)

    # While a mostly-unchanged batch is looked up (index probes inside SQLite or
    # PostgreSQL, without the GIL), the next one is read, keyed and digested in a thread.
    ahead: asyncio.Future[Batch] | None = None
    collecting_less = False
    try:
        while True:
            await ctx.checkpoint()
            if ahead is None:
                batch = await asyncio.to_thread(read_batch, first_batch)
                first_batch = batch_size
            else:
                # Shielded: a cancelled body must not cancel the read, which goes on in
                # its thread whatever happens; the finally below waits for it.
                batch = await asyncio.shield(ahead)
                ahead = None
            read, good, rejected = batch
            if not read:
                break
            if mostly_unchanged:
                if not collecting_less:
                    _rarer_collections.enter()
                    collecting_less = True
                ahead = asyncio.ensure_future(
                    asyncio.to_thread(read_batch, batch_size * PROBE_BATCHES)
                )
            async with ctx.session() as session, session.begin():
                batch_counts = await q.upsert_records(
                    session,
                    dataset=f.dataset,
                    file_id=f.id,
                    rows=good,
                    now=utcnow(),
                    mostly_unchanged=mostly_unchanged,
                )
                await q.add_errors(session, file_id=f.id, task_id=ctx.task_id, errors=rejected)
                batch_counts.read, batch_counts.rejected = read, len(rejected)
                counts.add(batch_counts)
                done += read
                await q.save_checkpoint(
                    session, task_id=ctx.task_id, file_id=f.id, rows_done=done, counts=counts
                )
                await ctx.hold(session)
            metrics.rows_synced(batch_counts.as_dict())  # committed: counted once
            # A sync of a mostly unchanged file (found so by this batch, or guessed from
            # the file's last sync above): the database is asked which rows differ before
            # any is sent (q.upsert_records), and the next batch is read meanwhile.
            mostly_unchanged = batch_counts.unchanged * 2 > len(good)
            await ctx.progress(
                done,
                max(info.total_rows, done),
                f"{counts.inserted} inserted, {counts.updated} updated, "
                f"{counts.unchanged} unchanged, {counts.rejected} rejected",
            )
    finally:
        try:
            if ahead is not None:
                # Leaving early (cancelled, a failed batch): the thread still holds the
                # file's reader; let it finish, and drop what it read (the checkpoint says
                # where the next run starts).
                await asyncio.wait([ahead])
                if not ahead.cancelled():
                    ahead.exception()
        finally:
            if collecting_less:  # also when that wait is itself cancelled (a shutdown)
                _rarer_collections.leave()
    async with ctx.session() as session, session.begin():
        await q.set_file_state(
            session, file_id=f.id, state=State.SUCCESS, task_id=ctx.task_id, counts=counts
        )
        await q.drop_checkpoint(session, task_id=ctx.task_id)
        errors = await q.errors_for(session, file_id=f.id, limit=100)
        await ctx.hold(session)
    return _summary(f, counts, errors)


def _stat(path: Path) -> os.stat_result | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat if S_ISREG(stat.st_mode) else None


def _identity(stat: os.stat_result) -> dict[str, int]:
    """The stored file as the pre-pass read it: new bytes written in place or a file put in
    its stead (even one of the same size and mtime: its inode or ctime moved) differ."""
    return {
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "inode": stat.st_ino,
        "ctime_ns": stat.st_ctime_ns,
    }


def _passed_before(f: SyncFile, stat: os.stat_result) -> readers.FileInfo | None:
    """What the pre-pass found in this file the last time it ran, when the stored file is
    still the one it read (its registered size, and ``_identity`` as it was then).
    Skipping the pre-pass saves reading the whole file once more: 0.33 s for a
    1,000,000-row CSV, 0.67 s for JSON Lines, 0.85 s for GB18030 (bench_sync's files)."""
    layout = f.layout
    if not layout or stat.st_size != f.size:
        return None
    if any(layout.get(k) != v for k, v in _identity(stat).items()):
        return None
    info = readers.FileInfo.of_layout(layout)
    return info if info is not None and info.format == f.format else None


def _summary(f: SyncFile, counts: q.Counts, errors: Sequence[SyncError]) -> dict[str, Any]:
    return {
        "file_id": f.id,
        "dataset": f.dataset,
        "rows_read": counts.read,
        "inserted": counts.inserted,
        "updated": counts.updated,
        "unchanged": counts.unchanged,
        "rejected": counts.rejected,
        "rejected_rows": [{"row": e.row_number, "reason": e.reason} for e in errors],
    }


# -- reading back -------------------------------------------------------------------------


@task(TaskName.FIND_FILES, queue=Queue.DATABASE, mode=Mode.ATOMIC, notify=False)
async def find_files(ctx: TaskContext, file_ids: list[int]) -> dict[str, Any]:
    async with ctx.session() as session:
        found = await q.existing_file_ids(session, file_ids=file_ids)
    return {"found": sorted(found), "missing": sorted(set(file_ids) - found)}


@task(TaskName.LIST_FILES, queue=Queue.DATABASE, mode=Mode.ATOMIC, notify=False)
async def list_files(ctx: TaskContext) -> list[dict[str, Any]]:
    async with ctx.session() as session:
        return [FileOut.of(f).model_dump() for f in await q.list_files(session)]


@task(TaskName.DATASET_SUMMARY, queue=Queue.DATABASE, mode=Mode.ATOMIC, notify=False)
async def dataset_summary(ctx: TaskContext, dataset: str) -> dict[str, Any] | None:
    async with ctx.session() as session:
        found = await q.get_dataset(session, name=dataset)
        if found is None:
            return None
        return DatasetOut(
            dataset=dataset,
            key_columns=found.key_columns,
            record_count=await q.record_count(session, dataset=dataset),
            files=[FileOut.of(f) for f in await q.list_files(session, dataset=dataset)],
        ).model_dump()


@task(TaskName.LIST_RECORDS, queue=Queue.DATABASE, mode=Mode.ATOMIC, notify=False)
async def list_records(
    ctx: TaskContext, dataset: str, limit: int, offset: int
) -> dict[str, Any] | None:
    async with ctx.session() as session:
        if await q.get_dataset(session, name=dataset) is None:
            return None
        page = await q.records_page(session, dataset=dataset, limit=limit, offset=offset)
        return RecordsPage(
            dataset=dataset, limit=limit, offset=offset, records=[RecordOut.of(r) for r in page]
        ).model_dump()
