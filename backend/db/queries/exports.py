"""Export queries: the export rows, and the dataset's records read for an export in key
order, one keyset page at a time. Keyword-only, session-first; the caller owns the
transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.constants import State
from backend.db.models import Export, Record, TaskRun
from backend.db.queries.json_values import JsonValues
from backend.db.queries.upsert import insert_for

PURGE_BATCH = 500


async def get_export(session: AsyncSession, *, export_id: str) -> Export | None:
    return await session.get(Export, export_id, populate_existing=True)


async def get_run(session: AsyncSession, *, task_id: str) -> TaskRun | None:
    """The ledger row of the task that makes an export (read beside the export's row)."""
    return await session.get(TaskRun, task_id)


async def start_export(session: AsyncSession, **values: Any) -> None:
    """Record the export as being written: a new row, or (a run after one that died) the
    row of the earlier run set back to STARTED. A finished export is left alone."""
    statement = insert_for(session)(Export).values(state=State.STARTED, rows=0, bytes=0, **values)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[Export.id],
            set_={"state": State.STARTED, "path": None, "rows": 0, "bytes": 0},
            where=Export.state != State.SUCCESS,
        )
    )


async def finish_export(session: AsyncSession, *, export_id: str, **values: Any) -> bool:
    """False when the row is gone (purged while the export ran)."""
    done = await session.execute(update(Export).where(Export.id == export_id).values(**values))
    return bool(done.rowcount)  # type: ignore[attr-defined]


async def end_export(session: AsyncSession, *, export_id: str, state: str) -> None:
    """A failed or cancelled export: its row says so (a finished one is never undone)."""
    await session.execute(
        update(Export)
        .where(Export.id == export_id, Export.state != State.SUCCESS)
        .values(state=state)
    )


# -- reading the records --------------------------------------------------------------


def _where(session: AsyncSession, dataset: str, where: dict[str, Any] | None) -> list[Any]:
    values = JsonValues(session.get_bind().dialect.name)
    conditions: list[Any] = [Record.dataset == dataset]
    conditions += [values.matches(column, value) for column, value in (where or {}).items()]
    return conditions


async def count_records(
    session: AsyncSession, *, dataset: str, where: dict[str, Any] | None
) -> int:
    query = select(func.count()).select_from(Record).where(*_where(session, dataset, where))
    return int(await session.scalar(query) or 0)


async def records_after(
    session: AsyncSession,
    *,
    dataset: str,
    after: str | None,
    where: dict[str, Any] | None,
    limit: int,
) -> Sequence[Row[tuple[str, dict[str, Any]]]]:
    """The next ``limit`` records (key, data) in key order after the key ``after``: a
    keyset page, served by the (dataset, key) index, so each page costs the same however
    far into the dataset it is."""
    query = select(Record.key, Record.data).where(*_where(session, dataset, where))
    if after is not None:
        query = query.where(Record.key > after)
    return (await session.execute(query.order_by(Record.key).limit(limit))).all()


async def dataset_columns(
    session: AsyncSession, *, dataset: str, known: list[str] | None, limit: int
) -> list[str]:
    """Every key any record of the dataset has (at most ``limit``): those of ``known``
    (the synced files' headers) in its order, then the order of the first record's keys,
    then the others by name."""
    if session.get_bind().dialect.name == "postgresql":
        statement = text(
            "SELECT DISTINCT k FROM records, jsonb_object_keys(records.data) AS k "
            "WHERE records.dataset = :dataset LIMIT :limit"
        )
    else:
        statement = text(
            "SELECT DISTINCT j.key FROM records, json_each(records.data) AS j "
            "WHERE records.dataset = :dataset LIMIT :limit"
        )
    found = {str(k) for k in await session.scalars(statement, {"dataset": dataset, "limit": limit})}
    first = await session.scalar(
        select(Record.data).where(Record.dataset == dataset).order_by(Record.key).limit(1)
    )
    ordered = list(dict.fromkeys(k for k in [*(known or []), *(first or {})] if k in found))
    return ordered + sorted(found - set(ordered))


# -- expiry -------------------------------------------------------------------------


async def expired(session: AsyncSession, *, now: datetime, limit: int = PURGE_BATCH) -> list[Any]:
    """A batch of exports past their expiry: (id, path)."""
    rows = await session.execute(
        select(Export.id, Export.path).where(Export.expires_at < now).limit(limit)
    )
    return list(rows.all())


async def delete_exports(session: AsyncSession, *, ids: list[str]) -> int:
    result = await session.execute(delete(Export).where(Export.id.in_(ids)))
    return int(result.rowcount)  # type: ignore[attr-defined]


async def known_ids(session: AsyncSession, *, ids: list[str]) -> set[str]:
    """Which of ``ids`` have a row; asked PURGE_BATCH at a time, since a day's exports can
    pass the databases' limit on bound parameters."""
    known: set[str] = set()
    for start in range(0, len(ids), PURGE_BATCH):
        chunk = ids[start : start + PURGE_BATCH]
        known.update(await session.scalars(select(Export.id).where(Export.id.in_(chunk))))
    return known
