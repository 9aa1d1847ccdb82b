"""Task registration: one decorator, one registry, read by both executors.

``@task(TaskName.X, queue=Queue.Y)`` records an ``async def body(ctx, **kwargs)``. The Celery
app turns every spec into a Celery task (runtime/celery_tasks.py); the local executor runs
the same body in the API process. Nothing else registers tasks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

TaskBody = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    queue: str
    body: TaskBody
    # Recorded in the ledger and claimed before running. Only the health check, whose whole
    # point is a bare round-trip through a worker, is untracked.
    tracked: bool = True
    # May be submitted by name through POST /api/tasks (diagnostic tasks only).
    submittable: bool = False
    # Sent by RedBeat, which knows nothing of the ledger: the first delivery of an unknown
    # id records its ledger row, so every firing is tracked (and a redelivery is not).
    scheduled: bool = False


_registry: dict[str, TaskSpec] = {}


def task(
    name: str,
    *,
    queue: str,
    tracked: bool = True,
    submittable: bool = False,
    scheduled: bool = False,
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    def register(body: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        if str(name) in _registry and _registry[str(name)].body is not body:
            raise ValueError(f"task {name!r} is registered twice")
        _registry[str(name)] = TaskSpec(
            str(name), str(queue), body, tracked, submittable, scheduled
        )
        return body

    return register


def get_spec(name: str) -> TaskSpec:
    """The spec for a task name; importing backend.tasks first makes every spec known."""
    import backend.tasks  # noqa: F401  (registers every task module)

    try:
        return _registry[name]
    except KeyError:
        raise UnknownTask(name) from None


def all_specs() -> list[TaskSpec]:
    import backend.tasks  # noqa: F401

    return list(_registry.values())


class UnknownTask(LookupError):
    pass
