"""The recovery sweep: find accepted tasks nobody carries any more and dispatch them again.

Runs when a worker starts, when the API starts, on the API's own timer, and from the
scheduled sweep. Safe to run anywhere and concurrently: each re-dispatch is a conditional
update on the row as it was read, so two sweepers never both win one task, and the claim
makes a stray duplicate message harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from backend.config import Settings
from backend.constants import State
from backend.runtime import ledger
from backend.runtime.events import TaskEvent
from backend.runtime.registry import UnknownTask, get_spec, notifies

log = logging.getLogger(__name__)

Dispatch = Callable[[ledger.Orphan], Awaitable[str | None]]


class Announce(Protocol):
    async def __call__(self, event: TaskEvent, *, notice: dict[str, Any] | None = None) -> None: ...


def notifies_failure(name: str) -> bool:
    """A task name the registry no longer knows (an old row) still gets its notification."""
    try:
        return notifies(get_spec(name), State.FAILURE)
    except UnknownTask:
        return True


@dataclass
class RecoveryReport:
    redispatched: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    broker_lost_data: bool = False
    worker_lost_at: datetime | None = None


async def recover(
    *,
    sessions: ledger.Sessions,
    settings: Settings,
    dispatch: Dispatch,
    announce: Announce,
    broker_lost_data: bool = False,
    worker_lost_at: datetime | None = None,
) -> RecoveryReport:
    """``dispatch`` sends one orphan again and returns the executor used (None: could not).

    ``broker_lost_data`` (Redis came back empty) makes every waiting Celery task an orphan
    at once; otherwise one counts only after ``pending_redispatch_seconds``, or, when a
    worker died without saying goodbye (``worker_lost_at``: when it was last seen), once
    it was sent before that: the dead worker may have taken its message with it (kombu
    gives such messages back only after the visibility timeout). Re-sending one that was
    still queued costs a duplicate message, which the claim skips.
    """
    report = RecoveryReport(broker_lost_data=broker_lost_data, worker_lost_at=worker_lost_at)
    lease = timedelta(seconds=settings.lease_seconds)
    pending_after = timedelta(
        seconds=0 if broker_lost_data else settings.pending_redispatch_seconds
    )
    orphans = await ledger.find_orphans(
        sessions, lease=lease, pending_after=pending_after, sent_before=worker_lost_at
    )
    for orphan in orphans:
        if orphan.attempts >= settings.max_attempts:
            error = {
                "type": "WorkerLost",
                "message": f"the task's runner was lost {orphan.attempts} times; giving up",
            }
            ended = await ledger.fail_unclaimed(
                sessions, task_id=orphan.id, error=error, notify=notifies_failure(orphan.name)
            )
            if ended.done:
                report.failed.append(orphan.id)
                await announce(
                    TaskEvent(orphan.id, orphan.name, State.FAILURE, orphan.executor, error=error),
                    notice=ended.notice,
                )
            continue
        # Take the row first (conditional on what we read), then send: a rival sweeper
        # that read the same row loses the update and sends nothing.
        if not await ledger.take_orphan(sessions, orphan):
            continue
        executor = await dispatch(orphan)
        if executor is not None:
            report.redispatched.append(orphan.id)
            await announce(TaskEvent(orphan.id, orphan.name, State.PENDING, executor))
    if report.redispatched or report.failed:
        log.warning(
            "recovery: re-dispatched %d task(s), gave up on %d",
            len(report.redispatched),
            len(report.failed),
        )
    return report
