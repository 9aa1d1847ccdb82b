"""How routes answer for tasks: 202 with a Location, or the result of a short wait."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response, status
from fastapi.responses import JSONResponse

from backend.constants import State
from backend.runtime import Runtime, StatusView, TaskFailed
from backend.schemas.tasks import TaskStatus, status_document, task_status

STILL_RUNNING: dict[int | str, dict[str, Any]] = {
    202: {"model": TaskStatus, "description": "still running: poll the task"}
}


def _status_bytes(run: Any) -> bytes:
    """The contract's status object as orjson makes it: the same bytes as pydantic's
    TaskStatus dump, without building and validating a model per answer."""
    return orjson.dumps(status_document(run), option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC)


def status_response(view: StatusView, if_none_match: str | None) -> Response:
    """The status route's answer: 304 when the client's copy is current, else the status."""
    headers = {"ETag": view.etag, "Cache-Control": "no-cache"}
    if if_none_match is not None and view.etag in _etags(if_none_match):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    if view.rendered is None:
        view.rendered = _status_bytes(view.row)
    return Response(view.rendered, media_type="application/json", headers=headers)


def submitted(run: Any) -> Response:
    """Every submission answers 202 with the task's status and its Location."""
    return Response(
        _status_bytes(run),
        status_code=status.HTTP_202_ACCEPTED,
        media_type="application/json",
        headers={"Location": f"/api/tasks/{run.id}"},
    )


def _etags(header: str) -> list[str]:
    return [tag.strip().removeprefix("W/") for tag in header.split(",")]


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
