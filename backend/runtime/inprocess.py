"""Running a task body in this process, against a real database: no Redis, no worker.

Beside the Celery worker and the local executor this is the third way to run a body, and
the one tests use for task logic (httpx ships ``MockTransport`` beside its real transport
in the same spirit). There is no claim and no ledger row: what runs is the body alone,
exactly as a redelivery would run it again after a first run committed, which is what
makes "every body is safe to run twice" testable in milliseconds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import backend.tasks  # noqa: F401  (registers the bodies this harness runs)
from backend.config import Settings
from backend.db.engine import get_session_factory
from backend.runtime.context import TaskContext
from backend.runtime.registry import get_spec


@dataclass
class BodyRun:
    """What one run of a body returned and reported."""

    result: Any
    progress: list[tuple[int, int | None, str | None]] = field(default_factory=list)
    published: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


async def run_body(
    name: str,
    args: dict[str, Any] | None = None,
    *,
    settings: Settings,
    task_id: str | None = None,
    attempt: int = 1,
) -> BodyRun:
    """Run the body registered as ``name`` once; exceptions propagate as the body raised
    them. Pass the same ``task_id`` twice to run it as a redelivery would."""
    run = BodyRun(result=None)

    async def write_progress(current: int, total: int | None, message: str | None) -> None:
        run.progress.append((current, total, message))

    async def never_cancelled() -> bool:
        return False

    async def publish(kind: str, data: dict[str, Any]) -> None:
        run.published.append((kind, data))

    ctx = TaskContext(
        task_id=task_id or str(uuid.uuid4()),
        name=name,
        attempt=attempt,
        executor="inprocess",
        runner="inprocess",
        session_factory=get_session_factory(settings),
        settings=settings,
        _write_progress=write_progress,
        _probe_cancel=never_cancelled,
        _publish=publish,
    )
    run.result = await get_spec(name).body(ctx, **(args or {}))
    return run
