"""Task status, cancel, listing, the worker round-trip, and diagnostic submissions."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status

from backend.api import task_routes
from backend.api.deps import (
    Authenticated,
    BoundedBodyRoute,
    IdempotencyKey,
    IfNoneMatch,
    PollWait,
    RuntimeDep,
)
from backend.api.errors import error_responses
from backend.api.params import TaskIdPath
from backend.api.responses import submitted
from backend.constants import State, TaskName
from backend.runtime import get_spec
from backend.schemas.tasks import (
    TASK_NAME_PATTERN,
    HealthCheck,
    TaskStatus,
    TaskSubmit,
    TaskSummary,
    task_summary,
)

router = APIRouter(
    prefix="/api/tasks", tags=["tasks"], dependencies=Authenticated, route_class=BoundedBodyRoute
)
legacy_router = APIRouter(tags=["tasks"], dependencies=Authenticated, route_class=BoundedBodyRoute)

HEALTH_CHECK_TIMEOUT = 5.0


@router.get("/health-check", response_model=HealthCheck)
async def health_check(runtime: RuntimeDep) -> HealthCheck:
    started = time.perf_counter()
    answer = await runtime.roundtrip(TaskName.HEALTH_CHECK, timeout=HEALTH_CHECK_TIMEOUT)
    return HealthCheck(
        ok=bool(answer.get("ok")),
        worker=str(answer.get("worker")),
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
    )


@router.get("", response_model=list[TaskSummary])
async def list_tasks(
    runtime: RuntimeDep,
    state: State | None = None,
    name: Annotated[str | None, Query(pattern=TASK_NAME_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[TaskSummary]:
    """Recent tasks, newest first, as summaries: the status object without ``result``
    (a list must not carry every result it lists; ``GET /api/tasks/{task_id}`` has it)."""
    runs = await runtime.recent(state=state, name=name, limit=limit)
    return [task_summary(r) for r in runs]


@router.post(
    "",
    response_model=TaskStatus,
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(404, e404="no task with this name"),
)
async def submit_task(
    body: TaskSubmit,
    runtime: RuntimeDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Submit a diagnostic task by name; application work has its own routes."""
    if not get_spec(body.name).submittable:
        raise HTTPException(
            422,
            [{"loc": ["body", "name"], "msg": f"{body.name} is not submittable",
              "type": "value_error"}],
        )  # fmt: skip
    submission = await runtime.submit(
        body.name, body.args, priority=body.priority, idempotency_key=idempotency_key
    )
    return submitted(submission.run)


@router.get("/{task_id}", response_model=TaskStatus, responses=task_routes.STATUS_RESPONSES)
async def get_task(
    task_id: TaskIdPath, runtime: RuntimeDep, wait: PollWait = 0, if_none_match: IfNoneMatch = None
) -> Response:
    """The task's status. With ``If-None-Match`` (the ETag of an earlier answer) an
    unchanged status is a 304; with ``wait`` the call answers as soon as it changes."""
    return await task_routes.status_of(runtime, task_id, wait, if_none_match)


@router.delete(
    "/{task_id}",
    response_model=TaskStatus,
    status_code=status.HTTP_202_ACCEPTED,
    responses=task_routes.CANCEL_RESPONSES,
)
async def cancel_task(task_id: TaskIdPath, runtime: RuntimeDep) -> TaskStatus:
    return await task_routes.cancel(runtime, task_id)


@legacy_router.get(
    "/task/{task_id}", response_model=TaskStatus, responses=task_routes.STATUS_RESPONSES
)
async def get_task_legacy(
    task_id: TaskIdPath, runtime: RuntimeDep, wait: PollWait = 0, if_none_match: IfNoneMatch = None
) -> Response:
    """The older clients' path; same as GET /api/tasks/{task_id}."""
    return await task_routes.status_of(runtime, task_id, wait, if_none_match)
