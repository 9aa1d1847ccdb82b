"""Conversations on the ``database`` queue, and the older clients' /run and /history."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from backend.api.deps import Authenticated, BoundedBodyRoute, IdempotencyKey, RuntimeDep
from backend.api.params import PageAfter, PageLimit, SessionIdPath
from backend.api.responses import STILL_RUNNING, result_or_accepted, submitted
from backend.constants import CONVERSATION_PAGE_DEFAULT, TaskName
from backend.runtime import Runtime
from backend.schemas.conversations import (
    SESSION_ID_PATTERN,
    Conversation,
    MessageIn,
    RunIn,
    RunOut,
)
from backend.schemas.tasks import TaskStatus

router = APIRouter(
    prefix="/api/conversations",
    tags=["conversations"],
    dependencies=Authenticated,
    route_class=BoundedBodyRoute,
)
legacy_router = APIRouter(
    tags=["conversations"], dependencies=Authenticated, route_class=BoundedBodyRoute
)

Wait = Annotated[float, Query(ge=0, le=30, description="seconds to wait for the read task")]
RUN_WAIT_SECONDS = 30.0


def _received_at() -> str:
    return datetime.now(UTC).isoformat()


@router.post("/{session_id}/messages", response_model=TaskStatus, status_code=202)
async def save_message(
    session_id: SessionIdPath,
    message: MessageIn,
    runtime: RuntimeDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    submission = await runtime.submit(
        TaskName.SAVE_CONVERSATION,
        {
            "session_id": session_id,
            "role": message.role,
            "content": message.content,
            "received_at": _received_at(),
        },
        idempotency_key=idempotency_key,
    )
    return submitted(submission.run)


async def _read(
    runtime: Runtime, session_id: str, wait: float, limit: int, after: str | None
) -> Any:
    submission = await runtime.submit(
        TaskName.GET_CONVERSATION_HISTORY,
        {"session_id": session_id, "limit": limit, "after": after},
    )
    return await result_or_accepted(runtime, submission.run.id, wait)


@router.get("/{session_id}", response_model=Conversation, responses=STILL_RUNNING)
async def read_conversation(
    session_id: SessionIdPath,
    runtime: RuntimeDep,
    wait: Wait = 5,
    limit: PageLimit = CONVERSATION_PAGE_DEFAULT,
    after: PageAfter = None,
) -> Any:
    """A page of the session's history, oldest first: at most ``limit`` messages after
    the cursor ``after``. Page on with the answer's ``next`` while ``has_more``."""
    return await _read(runtime, session_id, wait, limit, after)


@router.delete("/{session_id}", response_model=TaskStatus, status_code=202)
async def delete_conversation(session_id: SessionIdPath, runtime: RuntimeDep) -> Response:
    submission = await runtime.submit(
        TaskName.DELETE_CONVERSATION_HISTORY, {"session_id": session_id}
    )
    return submitted(submission.run)


@legacy_router.get("/history", response_model=Conversation, responses=STILL_RUNNING)
async def history(
    runtime: RuntimeDep,
    session_id: Annotated[str, Query(pattern=SESSION_ID_PATTERN)],
    wait: Wait = 5,
    limit: PageLimit = CONVERSATION_PAGE_DEFAULT,
    after: PageAfter = None,
) -> Any:
    """The older clients' path; same as GET /api/conversations/{session_id}."""
    return await _read(runtime, session_id, wait, limit, after)


@legacy_router.post("/run", response_model=RunOut, responses=STILL_RUNNING)
async def run(body: RunIn, runtime: RuntimeDep) -> Any:
    """Store the user turn, get the responder's reply, store it, return it (one task)."""
    session_id = body.session_id or uuid.uuid4().hex
    submission = await runtime.submit(
        TaskName.RUN_TURN,
        {"session_id": session_id, "user_input": body.user_input, "received_at": _received_at()},
    )
    outcome = await result_or_accepted(runtime, submission.run.id, RUN_WAIT_SECONDS)
    if isinstance(outcome, JSONResponse):
        return outcome
    return RunOut(session_id=session_id, reply=outcome["reply"], task_id=submission.run.id)
