"""The task status object of the HTTP contract, and the generic submission body."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Protocol

from pydantic import AfterValidator, BaseModel, Field

from backend.schemas.types import JSON_INTEGER, storable

TASK_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"


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


class TaskSummary(BaseModel):
    """A task in a listing (``GET /api/tasks``): the status object without ``result``.

    Results can be large (up to MAX_RESULT_BYTES each), and a list of hundreds of them
    would be as large as all of them together; ``GET /api/tasks/{task_id}`` has it. The
    ``error`` stays: it is short, and what a listing of failures is read for."""

    task_id: str
    name: str
    queue: str
    state: str
    progress: Progress | None = None
    error: TaskError | None = None
    executor: str
    attempts: int
    submitted_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class _Summarised(Protocol):
    id: str
    name: str
    queue: str
    state: str
    progress: dict[str, Any] | None
    error: dict[str, Any] | None
    executor: str
    attempts: int
    submitted_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def task_summary(run: _Summarised) -> TaskSummary:
    return TaskSummary(
        task_id=run.id,
        name=run.name,
        queue=run.queue,
        state=run.state,
        progress=Progress.model_validate(run.progress) if run.progress else None,
        error=TaskError.model_validate(run.error) if run.error else None,
        executor=run.executor,
        attempts=run.attempts,
        submitted_at=run.submitted_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
    )


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


def status_document(run: _Run) -> dict[str, Any]:
    """The task status object of the contract, from a ledger row (an ORM object or a Core
    row): the one place its shape is written. The hot status route serialises this dict
    directly; everything else goes through ``task_status``."""
    return {
        "task_id": run.id,
        "name": run.name,
        "queue": run.queue,
        "state": run.state,
        "progress": run.progress or None,
        "result": run.result,
        "error": run.error or None,
        "executor": run.executor,
        "attempts": run.attempts,
        "submitted_at": run.submitted_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }


def task_status(run: _Run) -> TaskStatus:
    return TaskStatus.model_validate(status_document(run))


MAX_ARGS_DEPTH = 16


def _storable(value: Any, depth: int = 0) -> Any:
    """Arguments are stored in the ledger as JSON: text the databases can store (no NUL,
    no unpaired surrogates), no NaN or infinities (not JSON), no absurd nesting."""
    if depth > MAX_ARGS_DEPTH:
        raise ValueError(f"nested deeper than {MAX_ARGS_DEPTH} levels")
    if isinstance(value, str):
        storable(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must not contain NaN or infinite numbers")
    if isinstance(value, dict):
        for key, item in value.items():
            _storable(key, depth + 1)
            _storable(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _storable(item, depth + 1)
    return value


TASK_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,100}$"


class TaskSubmit(BaseModel):
    """Submit a diagnostic task by name (``system.noop``, ``system.sleep``)."""

    name: str = Field(pattern=TASK_NAME_PATTERN)
    args: Annotated[dict[str, Any], AfterValidator(_storable)] = Field(default_factory=dict)
    priority: Annotated[int, Field(ge=0, le=9), JSON_INTEGER] = 5


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
