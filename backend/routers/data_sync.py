"""Data sync: register files, sync them into datasets (queue ``data_sync``), read back.

The upload is streamed to disk here (files/storage.py, no database); registering it, and
every read, is a task like any other.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Query, Response, UploadFile, status
from fastapi.responses import JSONResponse

from backend.api import task_routes
from backend.api.deps import (
    Authenticated,
    BoundedBodyRoute,
    IdempotencyKey,
    IfNoneMatch,
    PollWait,
    RuntimeDep,
    SettingsDep,
)
from backend.api.errors import UNPROCESSABLE, error_responses
from backend.api.params import DatasetPath, TaskIdPath
from backend.api.responses import STILL_RUNNING, accepted, result_or_accepted
from backend.constants import State, TaskName
from backend.files import storage
from backend.runtime import ExecutorFull, Runtime, TaskFailed
from backend.schemas.data_sync import (
    COLUMN_PATTERN,
    DATASET_PATTERN,
    BatchAccepted,
    DatasetOut,
    FileAccepted,
    FileOut,
    FileRegistered,
    RecordsPage,
    SyncAccepted,
    SyncBatch,
    SyncSingle,
)
from backend.schemas.tasks import TaskStatus

router = APIRouter(
    prefix="/api/data-sync",
    tags=["data-sync"],
    dependencies=Authenticated,
    route_class=BoundedBodyRoute,
)

REGISTER_WAIT_SECONDS = 5.0
READ_WAIT_SECONDS = 10.0
LOOKUP_WAIT_SECONDS = 1.0  # bounded: a busy worker must not hold up the 202

UNKNOWN_FILE = error_responses(404, e404="no file with one of these ids")
UNKNOWN_DATASET = error_responses(404, e404="no dataset with this name")


def _key_columns(raw: str) -> list[str]:
    columns = [c.strip() for c in raw.split(",") if c.strip()]
    if len(columns) > 20 or any(not re.match(COLUMN_PATTERN, c) for c in columns):
        raise HTTPException(
            422,
            [{"loc": ["body", "key_columns"], "msg": "comma-separated column names (≤ 20)",
              "type": "value_error"}],
        )  # fmt: skip
    return columns


@router.post(
    "/files",
    response_model=FileRegistered,
    status_code=status.HTTP_201_CREATED,
    responses={
        202: {"model": FileAccepted, "description": "still registering: poll the task"},
        **error_responses(413),
        **UNPROCESSABLE,
    },
)
async def register_file(
    runtime: RuntimeDep,
    settings: SettingsDep,
    file: UploadFile,
    dataset: Annotated[str, Form(pattern=DATASET_PATTERN)],
    key_columns: Annotated[str, Form(max_length=4000)] = "",
) -> Any:
    columns = _key_columns(key_columns)
    try:
        stored = await storage.save_stream(
            file,
            data_dir=settings.data_dir,
            original_name=file.filename,
            max_bytes=settings.max_upload_bytes,
        )
    except storage.TooLarge as exc:
        # A body past the limit was refused before it was read (BoundedBodyRoute); this is
        # a file that fitted only thanks to the allowance for the multipart framing.
        raise HTTPException(413, str(exc)) from None
    try:
        submission = await runtime.submit(
            TaskName.REGISTER_FILE,
            {
                "stored_path": str(stored.path),
                "original_name": stored.original_name,
                "size": stored.size,
                "checksum": stored.checksum,
                "dataset": dataset,
                "key_columns": columns,
            },
        )
    except ExecutorFull:
        # Refused (429/503): no registration will ever read this copy. (Other failures
        # leave it to the upload sweep: the registration may have been recorded.)
        await asyncio.to_thread(stored.path.unlink, missing_ok=True)
        raise
    task_id = submission.run.id
    try:
        outcome = await result_or_accepted(runtime, task_id, REGISTER_WAIT_SECONDS)
    except TaskFailed as exc:
        error = exc.run.error or {}
        if error.get("type") == "BadFile":
            raise HTTPException(422, error.get("message")) from None
        raise
    if isinstance(outcome, JSONResponse):
        return JSONResponse(
            {"task_id": task_id}, status_code=202, headers={"Location": f"/api/tasks/{task_id}"}
        )
    return FileRegistered(
        file_id=outcome["file_id"], task_id=task_id, duplicate=outcome["duplicate"]
    )


async def _read(runtime: Runtime, name: str, args: dict[str, Any]) -> Any:
    submission = await runtime.submit(name, args, priority=9)
    return await result_or_accepted(runtime, submission.run.id, READ_WAIT_SECONDS)


@router.get("/files", response_model=list[FileOut], responses=STILL_RUNNING)
async def list_files(runtime: RuntimeDep) -> Any:
    return await _read(runtime, TaskName.LIST_FILES, {})


async def _require_files(runtime: Runtime, file_ids: list[int]) -> None:
    """404 for unknown ids at submit time. When no worker answers the lookup in time the
    sync is accepted anyway; it then fails with a readable reason if the file is gone."""
    submission = await runtime.submit(TaskName.FIND_FILES, {"file_ids": file_ids}, priority=9)
    run = await runtime.wait(submission.run.id, LOOKUP_WAIT_SECONDS)
    missing = run.result.get("missing") if run.state == State.SUCCESS and run.result else None
    if missing:
        raise HTTPException(404, f"no file with id {', '.join(map(str, missing))}")


@router.post(
    "/sync-single-file", response_model=SyncAccepted, status_code=202, responses=UNKNOWN_FILE
)
async def sync_single_file(
    body: SyncSingle,
    runtime: RuntimeDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> SyncAccepted:
    await _require_files(runtime, [body.file_id])
    submission = await runtime.submit(
        TaskName.SYNC_FILE,
        {"file_id": body.file_id},
        priority=body.priority,
        idempotency_key=idempotency_key,
    )
    run = submission.run
    accepted(response, run.id)
    return SyncAccepted(
        celery_task_id=run.id, task_id=run.id, status=run.state, executor=run.executor
    )


@router.post("/sync-batch", response_model=BatchAccepted, status_code=202, responses=UNKNOWN_FILE)
async def sync_batch(body: SyncBatch, runtime: RuntimeDep) -> BatchAccepted:
    file_ids = list(dict.fromkeys(body.file_ids))
    await _require_files(runtime, file_ids)
    task_ids = [
        (await runtime.submit(TaskName.SYNC_FILE, {"file_id": f}, priority=body.priority)).run.id
        for f in file_ids
    ]
    return BatchAccepted(task_ids=task_ids)


@router.get(
    "/task-status/{task_id}",
    response_model=TaskStatus,
    responses=task_routes.STATUS_RESPONSES,
)
async def task_status(
    task_id: TaskIdPath, runtime: RuntimeDep, wait: PollWait = 0, if_none_match: IfNoneMatch = None
) -> Response:
    """As ``GET /api/tasks/{task_id}``."""
    return await task_routes.status_of(runtime, task_id, wait, if_none_match)


@router.delete(
    "/cancel-task/{task_id}",
    response_model=TaskStatus,
    status_code=202,
    responses=task_routes.CANCEL_RESPONSES,
)
async def cancel_task(task_id: TaskIdPath, runtime: RuntimeDep) -> TaskStatus:
    """As ``DELETE /api/tasks/{task_id}``."""
    return await task_routes.cancel(runtime, task_id)


def _found(outcome: Any, dataset: str) -> Any:
    if outcome is None:
        raise HTTPException(404, f"no dataset named {dataset!r}")
    return outcome


@router.get(
    "/datasets/{dataset}",
    response_model=DatasetOut,
    responses={**STILL_RUNNING, **UNKNOWN_DATASET},
)
async def dataset_summary(dataset: DatasetPath, runtime: RuntimeDep) -> Any:
    return _found(await _read(runtime, TaskName.DATASET_SUMMARY, {"dataset": dataset}), dataset)


@router.get(
    "/datasets/{dataset}/records",
    response_model=RecordsPage,
    responses={**STILL_RUNNING, **UNKNOWN_DATASET},
)
async def dataset_records(
    dataset: DatasetPath,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Any:
    args = {"dataset": dataset, "limit": limit, "offset": offset}
    return _found(await _read(runtime, TaskName.LIST_RECORDS, args), dataset)
