"""The RedBeat schedule: list the entries, and run one now."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Response

from backend.api.deps import Authenticated, BoundedBodyRoute, RuntimeDep
from backend.api.errors import error_responses
from backend.api.responses import submitted
from backend.runtime.schedules import UnknownSchedule, definition, read_entries
from backend.schemas.schedules import Schedule
from backend.schemas.tasks import TaskStatus

router = APIRouter(
    prefix="/api/schedules",
    tags=["schedules"],
    dependencies=Authenticated,
    route_class=BoundedBodyRoute,
)

READ_TIMEOUT_SECONDS = 3.0


@router.get("", response_model=list[Schedule])
async def list_schedules(runtime: RuntimeDep) -> list[Schedule]:
    async with asyncio.timeout(READ_TIMEOUT_SECONDS):
        entries = await asyncio.to_thread(read_entries, runtime.celery, redis_up=runtime.broker.up)
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
        entry = definition(runtime.celery, name)
    except UnknownSchedule:
        raise HTTPException(404, f"no schedule named {name!r}") from None
    submission = await runtime.submit(entry["task"], dict(entry.get("kwargs") or {}))
    return submitted(submission.run)
