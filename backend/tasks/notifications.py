"""Reading notifications back (queue ``database``).

Notifications are written by whoever ends a task, in the same transaction that ends it
(runtime/ledger.py), so there is no task that records them.
"""

from __future__ import annotations

from typing import Any

from backend.constants import Queue, TaskName
from backend.db.queries import notifications
from backend.runtime.context import TaskContext
from backend.runtime.registry import Mode, task


@task(TaskName.LIST_NOTIFICATIONS, queue=Queue.DATABASE, mode=Mode.ATOMIC, notify=False)
async def list_notifications(
    ctx: TaskContext, limit: int = 50, state: str | None = None
) -> list[dict[str, Any]]:
    async with ctx.session() as session:
        rows = await notifications.latest(session, limit=limit, state=state)
    return [notifications.as_dict(r) for r in rows]
