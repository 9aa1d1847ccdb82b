"""The recovery sweep: find accepted tasks nobody carries any more and dispatch them again.

``sweep`` is the one sweep: the API's timer, a starting worker and the scheduled task
(``system.recover``) all run it, each with its own way to send (``dispatch``). Safe to run
anywhere and concurrently: each re-dispatch is a conditional
update on the row as it was read, so two sweepers never both win one task, and the claim
makes a stray duplicate message harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from backend.config import Settings
from backend.constants import PRESENCE_INTERVAL, Executor, State
from backend.runtime import ledger, metrics
from backend.runtime.broker import Broker
from backend.runtime.events import Announcer, TaskEvent
from backend.runtime.registry import UnknownTask, get_spec, notifies

log = logging.getLogger(__name__)

Dispatch = Callable[[ledger.Orphan], Awaitable[str | None]]


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


async def sweep(
    *,
    sessions: ledger.Sessions,
    settings: Settings,
    broker: Broker,
    dispatch: Dispatch,
    announcer: Announcer,
    worker_last_seen: float | None = None,
) -> RecoveryReport:
    """Ask Redis what happened since the last sweep (did it lose its data? did a worker
    die without leaving?), then re-send what nobody carries.

    ``worker_last_seen``: a worker starting under the name of one that died says when
    that one was last seen (runtime/worker.py)."""
    broker_up = await broker.probe()
    lost = await broker.lost_its_data() if broker_up else False
    dead_seen = await broker.take_dead_workers() if broker_up else None
    if worker_last_seen is not None:
        dead_seen = max(dead_seen or 0.0, worker_last_seen)
    report = await recover(
        sessions=sessions,
        settings=settings,
        dispatch=dispatch,
        announcer=announcer,
        broker_lost_data=lost,
        worker_lost_at=_since(dead_seen),
    )
    metrics.RECOVERY_SWEEPS.inc()
    if report.redispatched:
        metrics.RECOVERY_REDISPATCHED.inc(len(report.redispatched))
    if report.failed:
        metrics.RECOVERY_GAVE_UP.inc(len(report.failed))
    if report.broker_lost_data:
        metrics.BROKER_DATA_LOST.inc()
    return report


def _since(last_seen: float | None) -> datetime | None:
    """A worker last seen at t may have lived, and taken messages, until its next beat
    was due; a beat of slack on top costs at most a duplicate the claim skips."""
    if last_seen is None:
        return None
    return datetime.fromtimestamp(last_seen + 2 * PRESENCE_INTERVAL, UTC)


def broker_dispatch(broker: Broker, sessions: ledger.Sessions) -> Dispatch:
    """Re-send through Celery only: for a process with no local executor (a worker, the
    scheduled task). None when Redis does not take the message; the next sweep retries."""

    async def dispatch(orphan: ledger.Orphan) -> str | None:
        sent = await broker.publish(
            name=orphan.name,
            task_id=orphan.id,
            kwargs=orphan.args,
            queue=orphan.queue,
            priority=orphan.priority,
        )
        if not sent:
            return None
        await ledger.mark_dispatched(sessions, task_id=orphan.id, executor=Executor.CELERY)
        return Executor.CELERY

    return dispatch


async def recover(
    *,
    sessions: ledger.Sessions,
    settings: Settings,
    dispatch: Dispatch,
    announcer: Announcer,
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
                metrics.task_finished(
                    orphan.name, orphan.queue, orphan.executor, State.FAILURE, ran=None, waited=None
                )
                event = TaskEvent(
                    orphan.id, orphan.name, State.FAILURE, orphan.executor, error=error
                )
                await _tell(announcer, event, ended.notice)
            continue
        # Take the row first (conditional on what we read), then send: a rival sweeper
        # that read the same row loses the update and sends nothing.
        if not await ledger.take_orphan(sessions, orphan):
            continue
        executor = await dispatch(orphan)
        if executor is not None:
            report.redispatched.append(orphan.id)
            await _tell(announcer, TaskEvent(orphan.id, orphan.name, State.PENDING, executor), None)
    if report.redispatched or report.failed:
        log.warning(
            "recovery: re-dispatched %d task(s), gave up on %d",
            len(report.redispatched),
            len(report.failed),
        )
    return report


async def _tell(announcer: Announcer, event: TaskEvent, notice: dict[str, object] | None) -> None:
    try:
        await announcer(event, notices=[notice] if notice else [])
    except Exception:  # news must never stop a sweep
        log.warning("could not announce %s %s", event.state, event.task_id, exc_info=True)
