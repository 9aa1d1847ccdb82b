"""Notifications: recorded by a task when another task ends; read through a task too."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from backend.api.deps import Authenticated, RuntimeDep
from backend.api.responses import STILL_RUNNING, result_or_accepted
from backend.constants import State, TaskName
from backend.schemas.notifications import Notification

router = APIRouter(prefix="/api/notifications", tags=["notifications"], dependencies=Authenticated)


@router.get("", response_model=list[Notification], responses=STILL_RUNNING)
async def list_notifications(
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    state: Annotated[State | None, Query(description="only this final state")] = None,
    wait: Annotated[float, Query(ge=0, le=30, description="seconds to wait for the read")] = 5,
) -> Any:
    submission = await runtime.submit(
        TaskName.LIST_NOTIFICATIONS,
        {"limit": limit, "state": state.value if state else None},
        priority=7,
    )
    return await result_or_accepted(runtime, submission.run.id, wait)
