"""Server-Sent Events: every task state change (and every notification) as it happens."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query
from sse_starlette import EventSourceResponse, ServerSentEvent

from backend.api.deps import Authenticated, RuntimeDep
from backend.runtime import Event

router = APIRouter(prefix="/api/events", tags=["events"], dependencies=Authenticated)

PING_SECONDS = 15
EVENT_ID_PATTERN = r"^\d{1,20}-\d{1,20}$"


def _sse(event: Event) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(event.data, default=str), event=event.kind, id=event.id)


@router.get(
    "",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "an event stream"}},
)
async def stream_events(
    runtime: RuntimeDep,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", pattern=EVENT_ID_PATTERN, description="resume after it"),
    ] = None,
    task_id: Annotated[
        str | None, Query(max_length=36, description="only this task's events")
    ] = None,
    max_seconds: Annotated[
        float | None, Query(gt=0, le=86_400, description="end the stream after this long")
    ] = None,
) -> EventSourceResponse:
    """``event: task`` carries ``task_id``, ``name``, ``state``, ``progress``, ``executor``,
    ``error``, ``attempt``, ``at``; ``event: notification`` a notification. Each has an id;
    send it back as ``Last-Event-ID`` on reconnect to get what was missed."""
    hub = runtime.hub
    if hub is None:
        raise HTTPException(503, "this process has no event hub")
    await hub.wake()

    def wanted(event: Event) -> bool:
        return task_id is None or event.data.get("task_id") == task_id

    async def events() -> AsyncGenerator[ServerSentEvent]:
        async with hub.listen() as queue:
            seen: str | None = None
            if last_event_id is not None:
                for event in await hub.replay(last_event_id):
                    seen = event.id
                    if wanted(event):
                        yield _sse(event)
            floor = seen or last_event_id
            while True:
                live = await queue.get()
                if live is None:
                    return  # too slow: reconnect with Last-Event-ID to catch up
                if floor is not None and hub.older_or_same(live.id, floor):
                    continue
                if wanted(live):
                    yield _sse(live)

    async def bounded() -> AsyncIterator[ServerSentEvent]:
        if max_seconds is None:
            async for item in events():
                yield item
            return
        stream = events()
        deadline = asyncio.get_running_loop().time() + max_seconds
        try:
            while True:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    return
                try:
                    yield await asyncio.wait_for(anext(stream), left)
                except (TimeoutError, StopAsyncIteration):
                    return
        finally:
            await stream.aclose()

    return EventSourceResponse(bounded(), ping=PING_SECONDS)
