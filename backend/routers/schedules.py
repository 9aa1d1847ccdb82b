"""The RedBeat schedule: list the entries, and run one now."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response

from backend.api.deps import Authenticated, BoundedBodyRoute, RuntimeDep
from backend.api.errors import error_responses
from backend.api.responses import submitted
from backend.runtime import UnknownSchedule
from backend.schemas.schedules import Schedule
from backend.schemas.tasks import TaskStatus

router = APIRouter(
    prefix="/api/schedules",
    tags=["schedules"],
    dependencies=Authenticated,
    route_class=BoundedBodyRoute,
)


@router.get("", response_model=list[Schedule])
async def list_schedules(runtime: RuntimeDep) -> list[Schedule]:
    entries = await runtime.schedule_entries()
    return [
        Schedule(
            name=e.name,
            task=e.task,
            schedule=f"every {e.every_seconds:g} s",
            every_seconds=e.every_seconds,
            last_run=e.last_run,
            next_run=e.next_run,
            enabled=e.enabled,
        )
        for e in entries
    ]


@router.post(
    "/{name}/run",
    response_model=TaskStatus,
    status_code=202,
    responses=error_responses(404, e404="no schedule with this name"),
)
async def run_now(name: str, runtime: RuntimeDep) -> Response:
    try:
        submission = await runtime.run_schedule(name)
    except UnknownSchedule:
        raise HTTPException(404, f"no schedule named {name!r}") from None
    return submitted(submission.run)
