"""How routes answer for tasks: 202 with a Location, or the result of a short wait."""

from __future__ import annotations

from typing import Any

from fastapi import Response, status
from fastapi.responses import JSONResponse

from backend.constants import State
from backend.runtime import Runtime, TaskFailed
from backend.schemas.tasks import TaskStatus, task_status

STILL_RUNNING: dict[int | str, dict[str, Any]] = {
    202: {"model": TaskStatus, "description": "still running: poll the task"}
}


def accepted(response: Response, task_id: str) -> None:
    """Every submission answers 202 with the task's Location."""
    response.status_code = status.HTTP_202_ACCEPTED
    response.headers["Location"] = f"/api/tasks/{task_id}"


async def result_or_accepted(runtime: Runtime, task_id: str, wait: float) -> Any:
    """The task's result if it succeeds within ``wait``; raises TaskFailed if it failed;
    else a 202 JSONResponse with the task to poll."""
    run = await runtime.wait(task_id, wait)
    if run.state == State.SUCCESS:
        return run.result
    if run.state in (State.FAILURE, State.REVOKED):
        raise TaskFailed(run)
    return JSONResponse(
        task_status(run).model_dump(mode="json"),
        status_code=status.HTTP_202_ACCEPTED,
        headers={"Location": f"/api/tasks/{task_id}"},
    )
