"""The task status and cancel handlers, shared by every router that serves them
(``/api/tasks``, the older ``/task/{id}``, data sync's ``task-status`` and ``cancel-task``):
one behaviour and one documentation for each, wherever it is mounted."""

from __future__ import annotations

from typing import Any

from fastapi import Response

from backend.api.errors import error_responses
from backend.api.responses import status_response
from backend.runtime import Runtime
from backend.schemas.tasks import TaskStatus, task_status

UNKNOWN_TASK = error_responses(404, e404="no task with this id")
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "unchanged since the ETag given in If-None-Match"}
}
STATUS_RESPONSES = UNKNOWN_TASK | NOT_MODIFIED
CANCEL_RESPONSES = error_responses(404, 409, e404="no task with this id")


async def status_of(
    runtime: Runtime, task_id: str, wait: float, if_none_match: str | None
) -> Response:
    """The task's status. With ``If-None-Match`` (the ETag of an earlier answer) an
    unchanged status is a 304; with ``wait`` the call answers as soon as it changes."""
    view = await runtime.status_view(task_id, wait=wait, known=if_none_match)
    return status_response(view, if_none_match)


async def cancel(runtime: Runtime, task_id: str) -> TaskStatus:
    return task_status(await runtime.cancel(task_id))
