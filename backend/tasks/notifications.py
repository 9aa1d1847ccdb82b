"""Notifications on the ``database`` queue: recording one when a task ends, and listing them.

Whoever ends a task (a worker, the local executor, a cancel, the recovery sweep) sends
``notifications.record``; it writes the row once per (task, state) and puts it on the
events stream. It is untracked: a ledger row per notification would double the ledger's
writes, and a notification about a notification would never end.
"""

from __future__ import annotations

from typing import Any

from backend.constants import Queue, State, TaskName
from backend.db.models.base import utcnow
from backend.db.queries import notifications
from backend.runtime.context import TaskContext
from backend.runtime.registry import task

LEVELS = {State.SUCCESS: "info", State.REVOKED: "warning", State.FAILURE: "error"}


def describe(task_name: str, state: str, error: dict[str, Any] | None) -> str:
    if state == State.SUCCESS:
        return f"{task_name} succeeded"
    if state == State.REVOKED:
        return f"{task_name} was cancelled"
    reason = (error or {}).get("message") or "no reason given"
    return f"{task_name} failed: {reason}"


@task(TaskName.RECORD_NOTIFICATION, queue=Queue.DATABASE, tracked=False)
async def record(
    ctx: TaskContext,
    task_id: str,
    task_name: str,
    state: str,
    error: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    values = {
        "task_id": task_id,
        "task_name": task_name,
        "state": state,
        "level": LEVELS.get(State(state), "info"),
        "message": describe(task_name, state, error),
        "error": error,
        "created_at": utcnow(),
    }
    async with ctx.session() as session, session.begin():
        row = await notifications.record(session, values)
    if row is None:
        return None  # recorded by an earlier delivery
    out = as_dict(row)
    await ctx.publish("notification", out)
    return out


@task(TaskName.LIST_NOTIFICATIONS, queue=Queue.DATABASE)
async def list_notifications(
    ctx: TaskContext, limit: int = 50, state: str | None = None
) -> list[dict[str, Any]]:
    async with ctx.session() as session:
        rows = await notifications.latest(session, limit=limit, state=state)
    return [as_dict(r) for r in rows]


def as_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "task_id": row.task_id,
        "task_name": row.task_name,
        "state": row.state,
        "level": row.level,
        "message": row.message,
        "error": row.error,
        "created_at": row.created_at.isoformat(),
    }
