"""Running one delivery of a task: claim, heartbeat, run the body, record the outcome.

Both executors call ``execute``; it never raises for anything the body does, and tells the
caller what to do next through its ``Outcome``:

    claim ──✗──► Skipped      (duplicate delivery, cancelled before start, already done)
      │
      ▼
    body ──► Succeeded        (SUCCESS, result stored)
         ├─► Failed           (FAILURE, error stored)
         ├─► Revoked          (cancelled at a checkpoint, or by the heartbeat)
         ├─► RetryLater(s)    (a transient error, attempts left: state RETRY, run again in s)
         └─► Lost             (our lease was taken over; we write nothing)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError

from backend.config import Settings
from backend.constants import State
from backend.db.models.base import utcnow
from backend.log_config import current_task_id
from backend.runtime import ledger
from backend.runtime.context import (
    LeaseLost,
    TaskCancelled,
    TaskContext,
    TransientError,
    error_info,
)
from backend.runtime.events import Announcer, TaskEvent
from backend.runtime.registry import TaskSpec

log = logging.getLogger(__name__)

# Errors worth another attempt: the database or the network blinked, not the input.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    OperationalError,
    ConnectionError,
    TimeoutError,
)


@dataclass(frozen=True)
class Outcome:
    kind: str  # skipped | succeeded | failed | revoked | retry | lost
    result: Any = None
    error: dict[str, Any] | None = None
    countdown: float = 0.0


def backoff(attempt: int, cap: float) -> float:
    return float(min(2 ** max(attempt - 1, 0), cap))


async def execute(
    spec: TaskSpec,
    task_id: str,
    args: dict[str, Any],
    *,
    executor: str,
    runner: str,
    sessions: ledger.Sessions,
    settings: Settings,
    announcer: Announcer | None = None,
) -> Outcome:
    """Run one delivery; every line logged meanwhile (by us or the body) has its task id."""
    token = current_task_id.set(task_id)
    try:
        return await _execute(spec, task_id, args, executor, runner, sessions, settings, announcer)
    finally:
        current_task_id.reset(token)


async def _execute(
    spec: TaskSpec,
    task_id: str,
    args: dict[str, Any],
    executor: str,
    runner: str,
    sessions: ledger.Sessions,
    settings: Settings,
    announcer: Announcer | None,
) -> Outcome:
    if not spec.tracked:
        return await _run_untracked(
            spec, task_id, args, executor, runner, sessions, settings, announcer
        )

    async def announce(state: State, **fields: Any) -> None:
        if announcer is not None:
            event = TaskEvent(task_id, spec.name, state.value, executor, **fields)
            try:
                await announcer(event)
            except Exception:  # news must never fail the task
                log.warning("could not announce %s %s", state, task_id, exc_info=True)

    token = str(uuid.uuid4())
    lease = timedelta(seconds=settings.lease_seconds)
    attempt = await ledger.claim(
        sessions, task_id=task_id, token=token, runner=runner, executor=executor, lease=lease
    )
    if attempt is None and spec.scheduled and await ledger.get(sessions, task_id) is None:
        await ledger.adopt(sessions, task_id=task_id, name=spec.name, queue=spec.queue, args=args)
        attempt = await ledger.claim(
            sessions, task_id=task_id, token=token, runner=runner, executor=executor, lease=lease
        )
    if attempt is None:
        log.info(
            "task %s %s: not claimable (finished, cancelled or running elsewhere); skipped",
            spec.name,
            task_id,
        )
        return Outcome("skipped")
    await announce(State.STARTED, attempt=attempt)

    async def write_progress(current: int, total: int | None, message: str | None) -> None:
        percent = round(100.0 * current / total, 2) if total else None
        progress = {"current": current, "total": total, "percent": percent, "message": message}
        if not await ledger.set_progress(sessions, task_id=task_id, token=token, progress=progress):
            await _raise_if_gone(sessions, task_id)
        await announce(State.PROGRESS, progress=progress, attempt=attempt)

    async def probe_cancel() -> bool:
        return await ledger.cancel_requested(sessions, task_id)

    ctx = TaskContext(
        task_id=task_id,
        name=spec.name,
        attempt=attempt,
        executor=executor,
        runner=runner,
        session_factory=sessions,
        settings=settings,
        _write_progress=write_progress,
        _probe_cancel=probe_cancel,
        _publish=announcer.publish if announcer is not None else None,
    )

    async def record_failure(error: dict[str, Any]) -> None:
        if await ledger.finish(
            sessions, task_id=task_id, token=token, state=State.FAILURE, error=error
        ):
            await announce(State.FAILURE, error=error, attempt=attempt)

    body = asyncio.ensure_future(spec.body(ctx, **args))
    stop = _Stop(body)
    watchdog = asyncio.ensure_future(_watch(ctx, stop, token, sessions, settings))
    # The soft time limit is enforced here, on the loop, so it works the same in a worker
    # and in the local executor; Celery's hard limit stays as the backstop for a body that
    # blocks the loop.
    timer = asyncio.get_running_loop().call_later(settings.task_soft_time_limit, stop, "timeout")
    try:
        result = await body
    except TaskCancelled:
        return Outcome("revoked")
    except LeaseLost:
        return Outcome("lost")
    except asyncio.CancelledError:
        if stop.reason is None:
            raise  # we ourselves are being cancelled (shutdown): the lease will lapse
        if stop.reason == "timeout":
            error = {
                "type": "SoftTimeLimitExceeded",
                "message": f"ran longer than {settings.task_soft_time_limit} s",
            }
            await record_failure(error)
            return Outcome("failed", error=error)
        return Outcome(stop.reason)
    except TRANSIENT_ERRORS as exc:
        error = error_info(exc)
        if attempt <= settings.task_max_retries:
            countdown = backoff(attempt, settings.task_retry_backoff_max)
            eta = utcnow() + timedelta(seconds=countdown)
            log.warning(
                "task %s %s: transient %s, retry in %ss", spec.name, task_id, exc, countdown
            )
            if await ledger.schedule_retry(
                sessions, task_id=task_id, token=token, eta=eta, error=error
            ):
                await announce(State.RETRY, error=error, attempt=attempt)
                return Outcome("retry", error=error, countdown=countdown)
            return Outcome("lost")
        await record_failure(error)
        return Outcome("failed", error=error)
    except Exception as exc:
        log.exception("task %s %s failed", spec.name, task_id)
        error = error_info(exc)
        await record_failure(error)
        return Outcome("failed", error=error)
    finally:
        timer.cancel()
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
    if await ledger.finish(
        sessions, task_id=task_id, token=token, state=State.SUCCESS, result=result
    ):
        await announce(State.SUCCESS, attempt=attempt)
        return Outcome("succeeded", result=result)
    # Cancelled (or taken over) while the last unit of work ran: the cancel stands.
    return Outcome("revoked")


async def _raise_if_gone(sessions: ledger.Sessions, task_id: str) -> None:
    row = await ledger.get(sessions, task_id)
    if row is not None and row.cancel_requested:
        raise TaskCancelled(task_id)
    raise LeaseLost(task_id)


class _Stop:
    """Stops the body from outside (watchdog, timer) and remembers why."""

    def __init__(self, body: asyncio.Future[Any]) -> None:
        self.body = body
        self.reason: str | None = None

    def __call__(self, reason: str) -> None:
        if self.reason is None and not self.body.done():
            self.reason = reason
            self.body.cancel()


async def _watch(
    ctx: TaskContext, stop: _Stop, token: str, sessions: ledger.Sessions, settings: Settings
) -> None:
    """Keep the lease alive; stop the body if it was cancelled or taken over.

    A cancelled body first gets a grace period to reach a checkpoint and stop cleanly;
    only a body that never checks is cancelled at its current await.
    """
    grace_left = 2
    while True:
        await asyncio.sleep(settings.heartbeat_seconds)
        try:
            held = await ledger.heartbeat(sessions, task_id=ctx.task_id, token=token)
        except (OperationalError, DBAPIError, OSError):
            log.warning("heartbeat for %s failed; will retry", ctx.task_id)
            continue
        if held:
            continue
        if await ledger.cancel_requested(sessions, ctx.task_id):
            ctx.mark_cancelled()
            if grace_left > 0:
                grace_left -= 1
                continue
            stop("revoked")
            return
        stop("lost")
        return


async def _run_untracked(
    spec: TaskSpec,
    task_id: str,
    args: dict[str, Any],
    executor: str,
    runner: str,
    sessions: ledger.Sessions,
    settings: Settings,
    announcer: Announcer | None,
) -> Outcome:
    async def no_progress(current: int, total: int | None, message: str | None) -> None:
        return None

    async def never_cancelled() -> bool:
        return False

    ctx = TaskContext(
        task_id=task_id,
        name=spec.name,
        attempt=1,
        executor=executor,
        runner=runner,
        session_factory=sessions,
        settings=settings,
        _write_progress=no_progress,
        _probe_cancel=never_cancelled,
        _publish=announcer.publish if announcer is not None else None,
    )
    try:
        return Outcome("succeeded", result=await spec.body(ctx, **args))
    except Exception as exc:
        return Outcome("failed", error=error_info(exc))
