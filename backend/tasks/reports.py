"""Reports: a dataset grouped by some columns with aggregates, computed by the database in
one query (db/queries/reports.py) and kept as the task's result, which the routes serve as
JSON, CSV or XLSX.

Leased, on the ``data_sync`` queue: the query reads the whole dataset, which on a large
one takes seconds, and an atomic run would hold SQLite's write lock (its claim's
transaction) all that time. A report writes nothing, so running it twice gives the same
answer and changes nothing.
"""

from __future__ import annotations

from typing import Any

from backend.constants import Queue, TaskName
from backend.db.queries import data_sync as datasets
from backend.db.queries import reports as q
from backend.runtime.context import TaskContext
from backend.runtime.registry import task
from backend.schemas.exports import ReportResult


class ReportFailed(Exception):
    """The report cannot be made (no such dataset, too many groups): says why."""


def label(op: str, column: str | None) -> str:
    return op if column is None else f"{op}({column})"


@task(TaskName.RUN_REPORT, queue=Queue.DATA_SYNC)
async def run_report(
    ctx: TaskContext, dataset: str, group_by: list[str], aggregates: list[dict[str, Any]]
) -> dict[str, Any]:
    return await _report(ctx, dataset, group_by, aggregates)


@task(TaskName.SCHEDULED_REPORT, queue=Queue.DATA_SYNC, scheduled=True)
async def scheduled_report(
    ctx: TaskContext,
    dataset: str,
    group_by: list[str],
    aggregates: list[dict[str, Any]],
    schedule: str,
) -> dict[str, Any]:
    """A firing of a report's RedBeat entry (runtime/report_schedules.py): the same
    report, its result saying which schedule made it. Sent by beat, so (like every
    scheduled task) its success leaves no notification; a failure does."""
    return await _report(ctx, dataset, group_by, aggregates) | {"schedule": schedule}


async def _report(
    ctx: TaskContext, dataset: str, group_by: list[str], aggregates: list[dict[str, Any]]
) -> dict[str, Any]:
    wanted = [(str(a["op"]), a.get("column")) for a in aggregates]
    limit = ctx.settings.report_max_groups
    async with ctx.session() as session:
        if await datasets.get_dataset(session, name=dataset) is None:
            raise ReportFailed(f"no dataset named {dataset!r}")
        await ctx.checkpoint()
        try:
            rows = await q.aggregate(
                session,
                dataset=dataset,
                group_by=group_by,
                aggregates=wanted,
                limit=limit + 1,
                max_bytes=ctx.settings.max_result_bytes,
            )
        except q.ReportTooLarge as exc:
            raise ReportFailed(str(exc)) from None
    if len(rows) > limit:
        raise ReportFailed(
            f"more than {limit:,} groups (REPORT_MAX_GROUPS): group by fewer or coarser columns"
        )
    return ReportResult(
        dataset=dataset,
        group_by=group_by,
        aggregates=[{"op": op, "column": column} for op, column in wanted],
        columns=[*group_by, *(label(op, column) for op, column in wanted)],
        rows=rows,
        groups=len(rows),
    ).model_dump()
