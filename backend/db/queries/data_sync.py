"""Data-sync queries: datasets, files, the batched upsert of records, rejected rows and
checkpoints. Keyword-only, session-first; the caller owns the transaction."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import delete, exists, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from backend.constants import FINAL_STATES, State
from backend.db.models import Dataset, Record, SyncCheckpoint, SyncError, SyncFile, TaskRun
from backend.db.models.base import utcnow
from backend.db.queries.upsert import insert_for
from backend.db.rows import PreparedRow

# Keys per IN (...) list: as many as this SQLite build takes variables in a statement
# (32,766 by default from 3.32 on, 999 before; 250,000 on Debian's), so a batch's keys go
# in one look-up, one hop to aiosqlite's thread and back (``execute_fetchall``) where
# lists of 900 took three hops each.
with contextlib.closing(sqlite3.connect(":memory:")) as _probe:
    IN_CHUNK = min(30_000, _probe.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 1)


@dataclass
class Counts:
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0

    def add(self, other: Counts) -> None:
        for name in ("read", "inserted", "updated", "unchanged", "rejected"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    @classmethod
    def of_file(cls, f: SyncFile) -> Counts:
        """The counts a file's last finished sync recorded."""
        return cls(f.rows_read, f.rows_inserted, f.rows_updated, f.rows_unchanged, f.rows_rejected)


# -- datasets and files -------------------------------------------------------------------


async def get_dataset(session: AsyncSession, *, name: str) -> Dataset | None:
    return await session.get(Dataset, name)


async def ensure_dataset(session: AsyncSession, *, name: str, key_columns: list[str]) -> Dataset:
    """Create the dataset on first use; racing creators both end with the same row."""
    await session.execute(
        insert_for(session)(Dataset)
        .values(name=name, key_columns=key_columns, created_at=utcnow())
        .on_conflict_do_nothing()
    )
    dataset = await session.get(Dataset, name, populate_existing=True)
    assert dataset is not None
    return dataset


async def note_columns(session: AsyncSession, *, name: str, columns: list[str]) -> None:
    """Add a synced file's header columns the dataset has not seen yet, after the others."""
    dataset = await session.get(Dataset, name, populate_existing=True)
    if dataset is None:
        return
    known = list(dataset.columns or [])
    new = [c for c in columns if c not in set(known)]
    if new:
        await session.execute(
            update(Dataset).where(Dataset.name == name).values(columns=known + new)
        )


async def keep_layout(session: AsyncSession, *, file_id: int, layout: dict[str, Any]) -> None:
    await session.execute(update(SyncFile).where(SyncFile.id == file_id).values(layout=layout))


async def file_by_checksum(
    session: AsyncSession, *, dataset: str, checksum: str
) -> SyncFile | None:
    return await session.scalar(
        select(SyncFile).where(SyncFile.dataset == dataset, SyncFile.checksum == checksum)
    )


async def add_file(session: AsyncSession, **values: Any) -> SyncFile:
    row = SyncFile(
        rows_read=0, rows_inserted=0, rows_updated=0, rows_unchanged=0, rows_rejected=0, **values
    )
    session.add(row)
    await session.flush()
    return row


async def get_file(session: AsyncSession, *, file_id: int) -> SyncFile | None:
    return await session.get(SyncFile, file_id)


async def existing_file_ids(session: AsyncSession, *, file_ids: list[int]) -> set[int]:
    rows = await session.scalars(select(SyncFile.id).where(SyncFile.id.in_(file_ids)))
    return set(rows.all())


async def list_files(session: AsyncSession, *, dataset: str | None = None) -> list[SyncFile]:
    query = select(SyncFile).order_by(SyncFile.id)
    if dataset is not None:
        query = query.where(SyncFile.dataset == dataset)
    return list((await session.scalars(query)).all())


async def stored_paths(session: AsyncSession) -> set[str]:
    """Every stored file a registered file points at (what the upload sweep keeps)."""
    return set(await session.scalars(select(SyncFile.stored_path)))


async def take_file(session: AsyncSession, *, file_id: int, task_id: str) -> str | None:
    """Make ``task_id`` the file's one running sync, inside the caller's transaction.

    Returns None when the file is ours (it was free, or this task already held it: a
    resumed or redelivered run), else the id of the live sync that holds it. Two syncs of
    one file at once would clear each other's rejected rows and race on the counters; the
    holder counts as gone once its run is final, so a sync that died never locks a file."""
    holder_alive = exists().where(
        TaskRun.id == SyncFile.last_sync_task_id, TaskRun.state.not_in(FINAL_STATES)
    )
    taken = await session.execute(
        update(SyncFile)
        .where(
            SyncFile.id == file_id,
            or_(
                SyncFile.last_sync_task_id.is_(None),
                SyncFile.last_sync_task_id == task_id,
                SyncFile.last_sync_state != State.STARTED,
                ~holder_alive,
            ),
        )
        .values(last_sync_state=State.STARTED, last_sync_task_id=task_id)
    )
    if int(taken.rowcount) == 1:  # type: ignore[attr-defined]
        return None
    holder = await session.scalar(select(SyncFile.last_sync_task_id).where(SyncFile.id == file_id))
    return str(holder)


async def set_file_state(
    session: AsyncSession,
    *,
    file_id: int,
    state: str,
    task_id: str,
    counts: Counts | None = None,
) -> None:
    """Only the file's current sync writes its state: a sync that lost the file (or never
    took it) changes nothing."""
    values: dict[str, Any] = {"last_sync_state": state}
    if counts is not None:
        values |= {
            "last_synced_at": utcnow(),
            "rows_read": counts.read,
            "rows_inserted": counts.inserted,
            "rows_updated": counts.updated,
            "rows_unchanged": counts.unchanged,
            "rows_rejected": counts.rejected,
        }
    await session.execute(
        update(SyncFile)
        .where(SyncFile.id == file_id, SyncFile.last_sync_task_id == task_id)
        .values(**values)
    )


# -- records ----------------------------------------------------------------------------


async def upsert_records(
    session: AsyncSession,
    *,
    dataset: str,
    file_id: int,
    rows: list[PreparedRow],
    now: datetime,
    mostly_unchanged: bool = False,
) -> Counts:
    """Upsert one batch keyed by (dataset, key) inside the caller's transaction; a key
    repeated in the batch: the last row wins; an unchanged row is not written at all.
    ``mostly_unchanged`` (the batch before was, or the file's last sync succeeded): ask
    the database which rows differ
    first (SQLite and PostgreSQL each their own way, below) and send only those.

    This is the hot path of a sync, so it talks to the driver directly: SQLAlchemy's
    per-row parameter processing cost more than the database's own work (measured).
    """
    latest: dict[str, PreparedRow] = {}
    for row in rows:
        latest[row.key] = row
    conn = await session.connection()
    if conn.dialect.name == "postgresql":
        counts = await _upsert_postgres(
            conn, dataset, file_id, rows, latest, now, probe=mostly_unchanged
        )
    else:
        counts = await _upsert_sqlite(
            conn, dataset, file_id, rows, latest, now, probe=mostly_unchanged
        )
    counts.unchanged = len(rows) - counts.inserted - counts.updated
    return counts


def _in_file_order(rows: list[PreparedRow], stored: dict[str, str]) -> Counts:
    """Inserted and updated rows, each row against the one before it with its key (the
    stored record, or an earlier row of the batch): a repeated key counts as an update."""
    known = dict(stored)
    counts = Counts()
    for row in rows:
        previous = known.get(row.key)
        if previous is None:
            counts.inserted += 1
        elif previous != row.row_hash:
            counts.updated += 1
        known[row.key] = row.row_hash
    return counts


UPSERT_SQLITE = (
    "INSERT INTO records (dataset, key, data, row_hash, source_file_id, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (dataset, key) DO UPDATE SET "
    "data = excluded.data, row_hash = excluded.row_hash, "
    "source_file_id = excluded.source_file_id, updated_at = excluded.updated_at "
    "WHERE records.row_hash != excluded.row_hash"
)


# The batch's keys and digests as one JSON object ({key: digest}, no key twice): the keys
# that are new (1) or differ (0). ``json_each`` gives each member's label and value as
# columns, where an array of pairs needed three ``json_extract`` calls a row: 0.55 s per
# 1,000,000 unchanged rows against 0.83-0.87 s (a /tmp script, 1,000,000 records as
# bench_sync writes them, 20,000 keys a probe, two rounds).
PROBE_SQLITE = (
    "SELECT p.key, r.id IS NULL FROM json_each(?) AS p "
    "LEFT JOIN records AS r ON r.dataset = ? AND r.key = p.key "
    "WHERE r.row_hash IS NOT p.value"
)


# Where the counted write reads its counts, before and after: the largest id in use (a new
# row takes the next one: SQLite's rowid, without AUTOINCREMENT, and nothing deletes
# records while the write lock is held) and the connection's changes (64-bit in the SQL
# function from SQLite 3.37, where the driver's attribute is a C int; records has no
# trigger whose changes would count too).
COUNTERS = "SELECT coalesce(max(id), 0), total_changes() FROM records"


async def _upsert_sqlite(
    conn: AsyncConnection,
    dataset: str,
    file_id: int,
    rows: list[PreparedRow],
    latest: dict[str, PreparedRow],
    now: datetime,
    *,
    probe: bool = False,
) -> Counts:
    """Three ways to one result, by what the batch before suggests:

    - ``probe`` (the batch before was mostly unchanged, or the file synced before) and no
      key repeated: the batch's
      (key, digest) pairs go in as one JSON object, joined to the records in SQLite, and
      only the keys that differ come back and are written: per 1,000,000 unchanged rows
      2.13 s against 2.90 s for ``IN`` lists compared in Python
      (benchmarks/bench_sqlite_probe.py), and the work happens inside SQLite, without the
      GIL, while the sync reads the next batch in a thread. For new keys it is the slower
      (3.31 s against 1.09 s). (Figures from the array of pairs the probe sent before and
      ``IN`` lists of 900 keys; see ``PROBE_SQLITE``.)
    - No key repeated (a first sync, a newer file): every row is written at once, and the
      counts are read off the database afterwards: ``changes`` (the upsert's WHERE skips
      an unchanged row, which SQLite does not count) and how far the largest id moved (a
      new row takes the largest id + 1; an update keeps its id). The write lock is taken
      first, so no other writer's rows land in between. This skips reading the stored
      digests, 0.75 s per 1,000,000 new keys.
    - A key repeated in the batch: the stored digests are read first (under the write lock
      too), and each row counts in file order against the one before it with its key (an
      update when it differs).
    """
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    stamp = now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    def params(chosen: Iterable[PreparedRow]) -> list[tuple[Any, ...]]:
        return [(dataset, r.key, r.data_json(), r.row_hash, file_id, stamp) for r in chosen]

    if probe and len(latest) == len(rows):
        differing = await driver.execute_fetchall(
            PROBE_SQLITE, [orjson.dumps({r.key: r.row_hash for r in rows}).decode(), dataset]
        )
        counts = Counts()
        for _, new in differing:
            if new:
                counts.inserted += 1
            else:
                counts.updated += 1
        if differing:
            wanted = {k for k, _ in differing}
            await driver.executemany(UPSERT_SQLITE, params(r for r in rows if r.key in wanted))
        return counts
    if not driver.in_transaction:
        await driver.execute_fetchall("BEGIN IMMEDIATE")
    if len(latest) == len(rows):
        ((largest, changes),) = await driver.execute_fetchall(COUNTERS)
        await driver.executemany(UPSERT_SQLITE, params(rows))
        ((largest_after, changes_after),) = await driver.execute_fetchall(COUNTERS)
        inserted = largest_after - largest
        return Counts(inserted=inserted, updated=changes_after - changes - inserted)
    stored: dict[str, str] = {}
    keys = list(latest)
    for i in range(0, len(keys), IN_CHUNK):
        chunk = keys[i : i + IN_CHUNK]
        stored.update(
            await driver.execute_fetchall(
                "SELECT key, row_hash FROM records WHERE dataset = ? AND key IN "
                f"({','.join('?' * len(chunk))})",
                [dataset, *chunk],
            )
        )
    await driver.executemany(
        UPSERT_SQLITE, params(r for r in latest.values() if stored.get(r.key) != r.row_hash)
    )
    return _in_file_order(rows, stored)


# The batch's keys and digests as two newline-joined texts (a key is JSON text, so it holds
# no raw newline; a digest is hex): asyncpg sends two strings at once, where two text[]
# arrays cost it a type check per element (ABCMeta.__instancecheck__), all of it holding
# the GIL the reading thread needs. 1,000,000 stored keys probed 20,000 at a time, one
# connection (a /tmp script, two rounds): client CPU 0.19 s against 0.75-1.02 s for the
# arrays, wall time 2.69-2.74 s against 3.19-4.01 s.
PROBE_POSTGRES = (
    "SELECT p.key FROM unnest(string_to_array($2, E'\\n'), string_to_array($3, E'\\n')) "
    "AS p(key, row_hash) LEFT JOIN LATERAL (SELECT r.row_hash FROM records r "
    "WHERE r.dataset = $1 AND r.key = p.key LIMIT 1) r ON true "
    "WHERE r.row_hash IS DISTINCT FROM p.row_hash"
)


async def _upsert_postgres(
    conn: AsyncConnection,
    dataset: str,
    file_id: int,
    batch: list[PreparedRow],
    latest: dict[str, PreparedRow],
    now: datetime,
    *,
    probe: bool,
) -> Counts:
    """COPY the batch into a session-local staging table, then one INSERT … SELECT …
    ON CONFLICT whose RETURNING tells inserted rows (xmax = 0) from updated ones.

    With ``probe``, only (key, digest) pairs are sent first (``PROBE_POSTGRES``) and looked up,
    one index probe each, and only the rows that differ are encoded and sent: a re-sync of an
    unchanged file then sends no data. Not by default: for a new file the probe is extra
    work (and ``key = ANY(5,000 keys)`` took 30 ms a batch, more than sending it).

    A key repeated in the batch is counted in file order, as on SQLite, against its stored
    digest, read first (such keys are few); RETURNING counts the others."""
    # asyncpg opens the transaction lazily, on the first statement SQLAlchemy runs; the
    # COPY below must run inside it, or the batch would not commit with its checkpoint.
    await conn.exec_driver_sql("SELECT 1")
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    repeated: set[str] = set()
    counts = Counts()
    if len(latest) < len(batch):
        seen: set[str] = set()
        for row in batch:
            (repeated if row.key in seen else seen).add(row.key)
        found = await driver.fetch(
            "SELECT key, row_hash FROM records WHERE dataset = $1 AND key = ANY($2::text[])",
            dataset,
            sorted(repeated),
        )
        stored = {r["key"]: r["row_hash"] for r in found}
        counts = _in_file_order([r for r in batch if r.key in repeated], stored)
    rows = list(latest.values())
    if probe:
        # LATERAL … LIMIT 1 keeps it one index probe per row, whatever the planner
        # estimates for the arrays (a hash join would read the whole table).
        differing = await driver.fetch(
            PROBE_POSTGRES,
            dataset,
            "\n".join([r.key for r in rows]),
            "\n".join([r.row_hash for r in rows]),
        )
        wanted = {r["key"] for r in differing}
        rows = [r for r in rows if r.key in wanted]
        if not rows:
            return counts
    await driver.execute(
        "CREATE TEMP TABLE IF NOT EXISTS syncq_staging "
        "(key text, data jsonb, row_hash text) ON COMMIT DELETE ROWS"
    )
    await driver.execute("TRUNCATE syncq_staging")
    await driver.copy_records_to_table(
        "syncq_staging", records=[(r.key, r.data_json(), r.row_hash) for r in rows]
    )
    returned = await driver.fetch(
        "INSERT INTO records (dataset, key, data, row_hash, source_file_id, updated_at) "
        "SELECT $1, key, data, row_hash, $2, $3 FROM syncq_staging "
        "ON CONFLICT (dataset, key) DO UPDATE SET data = excluded.data, "
        "row_hash = excluded.row_hash, source_file_id = excluded.source_file_id, "
        "updated_at = excluded.updated_at "
        "WHERE records.row_hash IS DISTINCT FROM excluded.row_hash "
        "RETURNING key, (xmax = 0) AS inserted",
        dataset,
        file_id,
        now,
    )
    for r in returned:
        if r["key"] in repeated:
            continue  # counted above, row by row
        if r["inserted"]:
            counts.inserted += 1
        else:
            counts.updated += 1
    return counts


async def record_count(session: AsyncSession, *, dataset: str) -> int:
    return int(await session.scalar(select(func.count()).where(Record.dataset == dataset)) or 0)


async def records_page(
    session: AsyncSession, *, dataset: str, limit: int, offset: int
) -> list[Record]:
    query = (
        select(Record)
        .where(Record.dataset == dataset)
        .order_by(Record.id)
        .limit(limit)
        .offset(offset)
    )
    return list((await session.scalars(query)).all())


# -- rejected rows and checkpoints --------------------------------------------------------


async def add_errors(
    session: AsyncSession, *, file_id: int, task_id: str, errors: list[tuple[int, str]]
) -> None:
    if errors:
        now = utcnow()
        await session.execute(
            insert(SyncError),
            [
                {
                    "file_id": file_id,
                    "task_id": task_id,
                    "row_number": n,
                    "reason": reason[:1000],
                    "created_at": now,
                }
                for n, reason in errors
            ],
        )


async def clear_errors(session: AsyncSession, *, file_id: int) -> None:
    await session.execute(delete(SyncError).where(SyncError.file_id == file_id))


async def errors_for(session: AsyncSession, *, file_id: int, limit: int) -> list[SyncError]:
    query = (
        select(SyncError)
        .where(SyncError.file_id == file_id)
        .order_by(SyncError.row_number)
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


async def get_checkpoint(session: AsyncSession, *, task_id: str) -> SyncCheckpoint | None:
    return await session.get(SyncCheckpoint, task_id, populate_existing=True)


async def save_checkpoint(
    session: AsyncSession, *, task_id: str, file_id: int, rows_done: int, counts: Counts
) -> None:
    statement = insert_for(session)(SyncCheckpoint).values(
        task_id=task_id,
        file_id=file_id,
        rows_done=rows_done,
        counts=counts.as_dict(),
        updated_at=utcnow(),
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[SyncCheckpoint.task_id],
            set_={
                "rows_done": statement.excluded.rows_done,
                "counts": statement.excluded.counts,
                "updated_at": statement.excluded.updated_at,
            },
        )
    )


async def drop_checkpoint(session: AsyncSession, *, task_id: str) -> None:
    await session.execute(delete(SyncCheckpoint).where(SyncCheckpoint.task_id == task_id))
