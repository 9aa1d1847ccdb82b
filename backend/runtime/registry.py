"""Task registration: one decorator, one registry, read by both executors.

``@task(TaskName.X, queue=Queue.Y)`` records an ``async def body(ctx, **kwargs)``. The Celery
app turns every spec into a Celery task (runtime/worker.py); the local executor runs
the same body in the API process. Nothing else registers tasks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

TaskBody = Callable[..., Awaitable[Any]]


class Mode(StrEnum):
    """How a run is made durable (runtime/execution.py).

    ``ATOMIC``: claim, body and finish (and the notification) commit as one transaction:
    one commit a task, and a redelivery sees all of it or none. For short bodies whose
    effects live in the ledger's database; a cancel waits for it to end.
    ``LEASED``: the claim commits first and a heartbeat keeps the lease; the body commits
    as it goes (checkpoints) and can be cancelled while it runs. For long work.
    """

    ATOMIC = "atomic"
    LEASED = "leased"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    queue: str
    body: TaskBody
    mode: Mode = Mode.LEASED
    # A notification row when it succeeds (a read's success is not news; its failure or
    # cancel is, like ``scheduled`` housekeeping's).
    notify: bool = True
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
    mode: Mode = Mode.LEASED,
    notify: bool = True,
    tracked: bool = True,
    submittable: bool = False,
    scheduled: bool = False,
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    def register(body: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        if mode is Mode.ATOMIC and scheduled:
            # A RedBeat firing has no ledger row until the leased path adopts it.
            raise ValueError(f"task {name!r}: scheduled tasks run leased")
        if str(name) in _registry and _registry[str(name)].body is not body:
            raise ValueError(f"task {name!r} is registered twice")
        _registry[str(name)] = TaskSpec(
            str(name), str(queue), body, mode, notify, tracked, submittable, scheduled
        )
        return body

    return register


def get_spec(name: str) -> TaskSpec:
    """The spec for a task name. Specs are pushed here by the task modules as they are
    imported; the entry points (``backend.celery_app``, ``backend.main``, the in-process
    harness) import ``backend.tasks``, and this module never imports a task module."""
    try:
        return _registry[name]
    except KeyError:
        raise UnknownTask(name) from None


def notifies(spec: TaskSpec, state: str) -> bool:
    """Whether a run of this task that ends in ``state`` leaves a notification: every
    failure and cancel does; a success only when it is news (not a read, not housekeeping)."""
    return not (state == "SUCCESS" and (spec.scheduled or not spec.notify))


def all_specs() -> list[TaskSpec]:
    return list(_registry.values())


class UnknownTask(LookupError):
    pass
