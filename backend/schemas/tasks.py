"""The task status object of the HTTP contract, and the generic submission body."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, Field


class Progress(BaseModel):
    current: int
    total: int | None = None
    percent: float | None = None
    message: str | None = None


class TaskError(BaseModel):
    type: str
    message: str


class TaskStatus(BaseModel):
    task_id: str
    name: str
    queue: str
    state: str
    progress: Progress | None = None
    result: Any = None
    error: TaskError | None = None
    executor: str
    attempts: int
    submitted_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class _Run(Protocol):
    id: str
    name: str
    queue: str
    state: str
    progress: dict[str, Any] | None
    result: Any
    error: dict[str, Any] | None
    executor: str
    attempts: int
    submitted_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def task_status(run: _Run) -> TaskStatus:
    return TaskStatus(
        task_id=run.id,
        name=run.name,
        queue=run.queue,
        state=run.state,
        progress=Progress.model_validate(run.progress) if run.progress else None,
        result=run.result,
        error=TaskError.model_validate(run.error) if run.error else None,
        executor=run.executor,
        attempts=run.attempts,
        submitted_at=run.submitted_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
    )


class TaskSubmit(BaseModel):
    """Submit a diagnostic task by name (``system.noop``, ``system.sleep``)."""

    name: str = Field(max_length=100)
    args: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=5, ge=0, le=9)


class HealthCheck(BaseModel):
    ok: bool
    worker: str
    latency_ms: float


class Health(BaseModel):
    status: str
    broker: str
    database: str
    executor: str
    workers: int
