"""Exports and reports of datasets.

Both are tasks. An export writes a file (queue ``data_sync``); its id is its task's id, and
its description and download are read through a short task (``exports.get_export``), like
every read. A report's table is its task's result, read from the ledger as JSON or turned
into CSV or XLSX here (a result is at most MAX_RESULT_BYTES).

What the reads answer while the work runs, as everywhere: **202** with where to poll.
``GET /api/exports/{id}`` describes the export in any state (200; its ``state`` says where
it is); ``GET /api/exports/{id}/download`` is 202 with that description until the file is
ready, 409 when the export failed or was cancelled, 410 once it expired;
``GET /api/reports/{id}`` is 202 with the task's status until the report is computed, 409
when it failed or was cancelled. Unknown ids are 404.

A report asked for with ``every_seconds`` is also a RedBeat entry ``report-<report id>``
(runtime/report_schedules.py): beat runs ``reports.scheduled_report`` with the same
arguments at that interval, each firing a task of its own (``GET /api/tasks?name=
reports.scheduled_report`` lists them; ``GET /api/reports/{task id}`` reads one), until
``DELETE /api/reports/{report_id}/schedule``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import FileResponse, JSONResponse

from backend.api.deps import (
    Authenticated,
    BoundedBodyRoute,
    IdempotencyKey,
    PollWait,
    RuntimeDep,
    SettingsDep,
)
from backend.api.errors import error_responses
from backend.api.params import DatasetPath, TaskIdPath
from backend.api.responses import STILL_RUNNING, accepted, result_or_accepted
from backend.constants import FINAL_STATES, State, TaskName
from backend.files import storage, writers
from backend.runtime import Runtime, delete_report_schedule, save_report_schedule
from backend.schemas.exports import (
    ExportAccepted,
    ExportOut,
    ExportRequest,
    ReportAccepted,
    ReportRequest,
    ReportResult,
)
from backend.schemas.tasks import TaskStatus, task_status

router = APIRouter(tags=["exports"], dependencies=Authenticated, route_class=BoundedBodyRoute)

READ_WAIT_SECONDS = 10.0
RETRY_AFTER = {"Retry-After": "5"}
LOOKUP_WAIT_SECONDS = 1.0  # bounded: a busy worker must not hold up the 202

UNKNOWN_DATASET = error_responses(404, e404="no dataset with this name")
UNKNOWN_EXPORT = error_responses(404, e404="no export with this id")
UNKNOWN_REPORT = error_responses(404, e404="no report with this id")
NOT_DOWNLOADABLE = error_responses(
    409, 410, e409="the export failed or was cancelled", e410="the export expired"
)
REPORT_ENDED = error_responses(409, e409="the report failed or was cancelled")
FILE_CONTENT = {
    media: {"schema": {"type": "string", "format": "binary"}}
    for media in ("text/csv", "application/x-ndjson", writers.XLSX_MEDIA_TYPE)
}


async def _require_dataset(runtime: Runtime, dataset: str) -> None:
    """404 for an unknown dataset at submit time. When no worker answers the lookup in
    time the work is accepted anyway; it then fails with a readable reason."""
    submission = await runtime.submit(TaskName.DATASET_SUMMARY, {"dataset": dataset}, priority=9)
    run = await runtime.wait(submission.run.id, LOOKUP_WAIT_SECONDS)
    if run.state == State.SUCCESS and run.result is None:
        raise HTTPException(404, f"no dataset named {dataset!r}")


@router.post(
    "/api/data-sync/datasets/{dataset}/exports",
    response_model=ExportAccepted,
    status_code=202,
    responses=UNKNOWN_DATASET,
)
async def create_export(
    dataset: DatasetPath,
    body: ExportRequest,
    runtime: RuntimeDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ExportAccepted:
    """Write the dataset to a file (queue ``data_sync``): 202 with the export's id, which
    is its task's id. Poll ``GET /api/exports/{export_id}`` (or the task), then download."""
    await _require_dataset(runtime, dataset)
    args = {
        "dataset": dataset,
        "format": body.format,
        "encoding": body.encoding,
        "columns": body.columns,
        "filter": body.filter,
    }
    submission = await runtime.submit(
        TaskName.EXPORT_DATASET, args, priority=body.priority, idempotency_key=idempotency_key
    )
    run = submission.run
    accepted(response, run.id)
    return ExportAccepted(export_id=run.id, task_id=run.id, status=run.state, executor=run.executor)


async def _export(runtime: Runtime, export_id: str) -> dict[str, Any] | JSONResponse:
    submission = await runtime.submit(TaskName.GET_EXPORT, {"export_id": export_id}, priority=9)
    found = await result_or_accepted(runtime, submission.run.id, READ_WAIT_SECONDS)
    if found is None:
        raise HTTPException(404, f"no export with id {export_id}")
    return found  # type: ignore[no-any-return]


@router.get(
    "/api/exports/{export_id}",
    response_model=ExportOut,
    responses={**STILL_RUNNING, **UNKNOWN_EXPORT},
)
async def describe_export(export_id: TaskIdPath, runtime: RuntimeDep) -> Any:
    """The export in any state: ``state`` (its task's), ``progress`` while it runs, and
    once it succeeded its rows, bytes, expiry and ``download`` link."""
    found = await _export(runtime, export_id)
    if isinstance(found, JSONResponse):
        return found
    return found["export"]


@router.get(
    "/api/exports/{export_id}/download",
    response_class=Response,
    responses={
        200: {"description": "the file", "content": FILE_CONTENT},
        202: {
            "model": ExportOut | TaskStatus,
            "description": "not ready: the export (or the read of it) still runs; poll",
        },
        **UNKNOWN_EXPORT,
        **NOT_DOWNLOADABLE,
    },
)
async def download_export(
    export_id: TaskIdPath, runtime: RuntimeDep, settings: SettingsDep
) -> Response:
    """The file, as an attachment named after the dataset (``<dataset>.csv``)."""
    found = await _export(runtime, export_id)
    if isinstance(found, JSONResponse):
        return found
    export = found["export"]
    state = export["state"]
    if state not in FINAL_STATES:
        return JSONResponse(
            export, status_code=202, headers={"Location": f"/api/tasks/{export['task_id']}"}
        )
    if state != State.SUCCESS:
        reason = (export.get("error") or {}).get("message") or "no reason given"
        raise HTTPException(409, f"export {export_id} ended {state}: {reason}")
    if export["expired"] or not found["path"]:
        raise HTTPException(410, f"export {export_id} expired")
    path = Path(found["path"])
    # Only ever a file of the exports folder, whatever the row says.
    directory = storage.exports_dir(settings.data_dir)
    if path.parent != directory or not await asyncio.to_thread(path.is_file):
        raise HTTPException(410, f"the file of export {export_id} is gone")
    return FileResponse(
        path,
        media_type=writers.media_type(export["format"], export["encoding"]),
        filename=f"{export['dataset']}{writers.EXTENSIONS[export['format']]}",
    )


@router.post(
    "/api/data-sync/datasets/{dataset}/reports",
    response_model=ReportAccepted,
    status_code=202,
    responses=UNKNOWN_DATASET,
)
async def create_report(
    dataset: DatasetPath,
    body: ReportRequest,
    runtime: RuntimeDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ReportAccepted:
    """Group the dataset's records and aggregate them, in the database (queue
    ``data_sync``): 202 with the report's id, its task's id. The table is the task's
    result; ``GET /api/reports/{report_id}`` serves it as JSON, CSV or XLSX."""
    await _require_dataset(runtime, dataset)
    args = {
        "dataset": dataset,
        "group_by": list(body.group_by),
        "aggregates": [a.model_dump() for a in body.aggregates],
    }
    if body.every_seconds is not None and not runtime.broker.up:
        raise HTTPException(
            503, "schedules live in Redis, which is unreachable", headers=RETRY_AFTER
        )
    submission = await runtime.submit(
        TaskName.RUN_REPORT, args, priority=body.priority, idempotency_key=idempotency_key
    )
    run = submission.run
    schedule = None
    if body.every_seconds is not None:
        schedule = await asyncio.to_thread(
            save_report_schedule, runtime.celery, run.id, body.every_seconds, args
        )
    accepted(response, run.id)
    return ReportAccepted(
        report_id=run.id,
        task_id=run.id,
        status=run.state,
        executor=run.executor,
        schedule=schedule,
    )


@router.delete(
    "/api/reports/{report_id}/schedule",
    status_code=204,
    response_class=Response,
    responses=error_responses(404, e404="no schedule for this report"),
)
async def delete_report_schedule_(report_id: TaskIdPath, runtime: RuntimeDep) -> Response:
    """Stop a scheduled report (the RedBeat entry its ``every_seconds`` made)."""
    if not runtime.broker.up:
        raise HTTPException(
            503, "schedules live in Redis, which is unreachable", headers=RETRY_AFTER
        )
    if not await asyncio.to_thread(delete_report_schedule, runtime.celery, report_id):
        raise HTTPException(404, f"no schedule for report {report_id}")
    return Response(status_code=204)


@router.get(
    "/api/reports/{report_id}",
    response_model=ReportResult,
    responses={
        200: {"content": {"text/csv": {}, writers.XLSX_MEDIA_TYPE: {}}},
        **STILL_RUNNING,
        **UNKNOWN_REPORT,
        **REPORT_ENDED,
    },
)
async def get_report(
    report_id: TaskIdPath,
    runtime: RuntimeDep,
    format: Annotated[
        Literal["json", "csv", "xlsx"], Query(description="json, or a file to download")
    ] = "json",
    wait: PollWait = 0,
) -> Any:
    """The report's table once computed (``wait``: seconds to wait for it)."""
    run = await runtime.wait(report_id, wait)
    if run.name not in (TaskName.RUN_REPORT, TaskName.SCHEDULED_REPORT):
        raise HTTPException(404, f"no report with id {report_id}")
    if run.state not in FINAL_STATES:
        return JSONResponse(
            task_status(run).model_dump(mode="json"),
            status_code=status.HTTP_202_ACCEPTED,
            headers={"Location": f"/api/tasks/{report_id}"},
        )
    if run.state != State.SUCCESS:
        reason = (run.error or {}).get("message") or "no reason given"
        raise HTTPException(409, f"report {report_id} ended {run.state}: {reason}")
    report = ReportResult.model_validate(run.result)
    if format == "json":
        return report
    content = await asyncio.to_thread(
        writers.render_table, format, report.columns, report.rows, title=report.dataset
    )
    return Response(
        content,
        media_type=writers.MEDIA_TYPES[format],
        headers={
            "Content-Disposition": (
                f'attachment; filename="{report.dataset}-report{writers.EXTENSIONS[format]}"'
            )
        },
    )
