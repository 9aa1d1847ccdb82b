"""The plain pattern's API (``python -m backend.serve --app benchmarks.plain_pattern.app:app``).

The routes are ``async def`` and call Celery's blocking client directly, as such backends
usually do.
"""

from __future__ import annotations

from typing import Any

from celery.result import AsyncResult
from fastapi import FastAPI
from pydantic import BaseModel

from benchmarks.plain_pattern.celery_app import app as celery_app
from benchmarks.plain_pattern.celery_app import save_message

app = FastAPI(title="plain pattern")


class MessageIn(BaseModel):
    role: str
    content: str


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/api/conversations/{session_id}/messages", status_code=202)
async def post_message(session_id: str, message: MessageIn) -> dict[str, str]:
    result = save_message.delay(session_id, message.role, message.content)
    return {"task_id": result.id}


@app.get("/api/tasks/{task_id}")
async def task_status(task_id: str) -> dict[str, Any]:
    result = AsyncResult(task_id, app=celery_app)
    value = result.result
    if isinstance(value, BaseException):
        value = repr(value)
    return {"task_id": task_id, "state": result.state, "result": value}
