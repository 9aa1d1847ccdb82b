"""Export and report requests and answers (the export task and read build ExportOut and
ReportResult here too, so each shape is written once)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from backend.constants import COLUMN_PATTERN, QUERY_COLUMN_PATTERN, State
from backend.files.bounds import MAX_COLUMNS
from backend.schemas.data_sync import Priority
from backend.schemas.tasks import Progress, TaskError
from backend.schemas.types import JSON_INTEGER, NO_NUL, storable

ExportFormat = Literal["csv", "xlsx", "jsonl"]
ExportEncoding = Literal["utf-8", "utf-8-sig", "gb18030"]
MAX_FILTERS = 20
MAX_GROUP_BY = 10
MAX_AGGREGATES = 20

Column = Annotated[
    str, Field(pattern=COLUMN_PATTERN, description="a column name"), AfterValidator(storable)
]
# A column a query names (filter, group-by, aggregate): no double quote either.
QueryColumn = Annotated[
    str,
    Field(
        pattern=QUERY_COLUMN_PATTERN,
        description="a column name (no comma, double quote or backslash)",
    ),
    AfterValidator(storable),
]
FilterValue = Annotated[
    str,
    Field(max_length=1000, json_schema_extra=NO_NUL, description="compared as text"),
    AfterValidator(storable),
]


def _unique(columns: list[str] | None) -> list[str] | None:
    return list(dict.fromkeys(columns)) if columns is not None else None


class ExportRequest(BaseModel):
    format: ExportFormat = "csv"
    encoding: ExportEncoding = Field(
        default="utf-8",
        description="for CSV and JSON Lines (utf-8-sig adds the byte-order mark Excel wants); "
        "an XLSX file is UTF-8 inside whatever this says",
    )
    columns: Annotated[
        list[Column] | None,
        Field(min_length=1, max_length=MAX_COLUMNS),
        AfterValidator(_unique),
    ] = Field(default=None, description="these columns in this order (default: every column)")
    filter: dict[QueryColumn, FilterValue | None] | None = Field(
        default=None,
        max_length=MAX_FILTERS,
        description="only records whose column equals the value, compared as text "
        '(a number 3 matches "3"; null matches a missing value)',
    )
    priority: Priority = 5


class ExportAccepted(BaseModel):
    export_id: str
    task_id: str
    status: str
    executor: str


class ExportOut(BaseModel):
    """An export as ``GET /api/exports/{export_id}`` describes it. ``state`` is its task's
    (PENDING, STARTED, PROGRESS, RETRY while it runs; SUCCESS, FAILURE, REVOKED once it
    ended); ``download`` is set once the file can be downloaded."""

    export_id: str
    task_id: str
    dataset: str
    format: str
    encoding: str
    columns: list[str] | None = None
    filter: dict[str, Any] | None = None
    state: str
    progress: Progress | None = None
    error: TaskError | None = None
    rows: int | None = None
    bytes: int | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None
    expired: bool = False
    download: str | None = None

    @classmethod
    def of(cls, export: Any, run: Any, now: datetime) -> ExportOut:
        """From the export's row and its task's ledger row (either may be None: the task
        has not started yet, or the ledger row was purged)."""
        args = dict(run.args) if run is not None else {}
        # The ledger knows best while it has the task: a run that died leaves the export's
        # row STARTED, and a retried one may have left it FAILURE before trying again.
        state = run.state if run is not None else export.state
        expired = export is not None and export.expires_at is not None and export.expires_at < now
        finished = state == State.SUCCESS and export is not None and export.state == State.SUCCESS
        export_id = export.id if export is not None else run.id
        return cls(
            export_id=export_id,
            task_id=export_id,
            dataset=export.dataset if export is not None else args.get("dataset", ""),
            format=export.format if export is not None else args.get("format", ""),
            encoding=export.encoding if export is not None else args.get("encoding", ""),
            columns=export.columns if export is not None else args.get("columns"),
            filter=export.filter if export is not None else args.get("filter"),
            state=state,
            progress=run.progress if run is not None else None,
            error=run.error if run is not None else None,
            rows=export.rows if finished else None,
            bytes=export.bytes if finished else None,
            created_at=export.created_at if export is not None else None,
            finished_at=export.finished_at if finished else None,
            expires_at=export.expires_at if finished else None,
            expired=expired,
            download=f"/api/exports/{export_id}/download" if finished and not expired else None,
        )


class CountAggregate(BaseModel):
    op: Literal["count"]
    column: QueryColumn | None = Field(
        default=None, description="count the records where it has a value (default: all)"
    )


class ValueAggregate(BaseModel):
    op: Literal["sum", "min", "max", "avg"]
    column: QueryColumn = Field(
        description="numbers (or text that is a number); other values are ignored"
    )


Aggregate = Annotated[CountAggregate | ValueAggregate, Field(discriminator="op")]


class ReportRequest(BaseModel):
    group_by: list[QueryColumn] = Field(
        default_factory=list, max_length=MAX_GROUP_BY, description="none: one row for all"
    )
    aggregates: list[Aggregate] = Field(min_length=1, max_length=MAX_AGGREGATES)
    priority: Priority = 5
    every_seconds: Annotated[int, Field(ge=10, le=31 * 86400), JSON_INTEGER] | None = Field(
        default=None,
        description="also run it again at this interval (a RedBeat entry "
        "report-<report_id>; DELETE /api/reports/{report_id}/schedule stops it)",
    )


class ReportAccepted(BaseModel):
    report_id: str
    task_id: str
    status: str
    executor: str
    schedule: str | None = None


class ReportResult(BaseModel):
    """A report: a table with one row per group, ``columns`` naming its cells (the group-by
    columns, then ``op`` or ``op(column)`` for each aggregate). Group values are text
    (null for a missing value); aggregates are numbers, null where a group has none."""

    dataset: str
    group_by: list[str]
    aggregates: list[dict[str, Any]]
    columns: list[str]
    rows: list[list[Any]]
    groups: int
    schedule: str | None = Field(default=None, description="the entry that ran it, if any")
