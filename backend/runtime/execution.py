"""Running one delivery of a task: claim, run the body, record the outcome.

Both executors call ``execute``; it never raises for anything the body does, and tells the
caller what to do next through its ``Outcome``:

    claim ──✗──► SKIPPED      (duplicate delivery, cancelled before start, already done;
      │                        on PostgreSQL, no row after ROW_WAITS: its insert failed)
      │
      ▼
    body ──► SUCCEEDED        (SUCCESS, result stored)
         ├─► FAILED           (FAILURE, error stored)
         ├─► REVOKED          (cancelled at a checkpoint, or by the heartbeat)
         ├─► RETRY(s)         (a transient error, attempts left: state RETRY, run again in s)
         └─► LOST             (our lease was taken over; we write nothing)

How the run is made durable depends on the task's mode (registry.Mode):

    ATOMIC   BEGIN · claim · body · finish · notification · COMMIT         one commit
             body raised? ROLLBACK (nothing happened) and run it LEASED instead, where
             it commits as it goes and its own error handling applies
    LEASED   claim (commit) │ body, committing as it goes, heartbeat keeps the lease │
             finish · notification (commit)

Events of one run go to the stream after its commit, in one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy.exc import DBAPIError, InvalidRequestError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from backend.config import Settings
from backend.constants import State
from backend.db.models.base import utcnow
from backend.log_config import current_task_id
from backend.runtime import ledger, metrics
from backend.runtime.context import (
    LeaseLost,
    TaskCancelled,
    TaskContext,
    error_info,
)
from backend.runtime.events import Announcer, TaskEvent
from backend.runtime.registry import Mode, TaskSpec, notifies
from backend.runtime.results import check_result_size
from backend.runtime.transient import is_transient

log = logging.getLogger(__name__)


def _run_again_leased(exc: BaseException) -> bool:
    """An atomic run that raised this is done again the leased way (see ``atomic``)."""
    return isinstance(exc, InvalidRequestError) or is_transient(exc)


class Kind(StrEnum):
    SKIPPED = "skipped"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REVOKED = "revoked"
    RETRY = "retry"
    LOST = "lost"


@dataclass(frozen=True)
class Outcome:
    kind: Kind
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
    atomic_engine: AsyncEngine | None = None,
    redelivered: bool = False,
) -> Outcome:
    """Run one delivery; every line logged meanwhile (by us or the body) has its task id.

    ``atomic_engine``: where an atomic run takes its connection (db.engine's
    ``get_atomic_engine`` in a worker process); by default the sessions' engine.
    ``redelivered``: the broker gave this message back (its worker died or rejected it).
    Such a delivery of an atomic task runs leased: an atomic run that killed its process
    rolled its claim back with it and left no count, and only a committed claim lets
    ``MAX_ATTEMPTS`` stop a body that kills every worker it runs on."""
    token = current_task_id.set(task_id)
    began = time.monotonic()
    try:
        engine = atomic_engine or ledger.engine_of(sessions)
        run = _Run(spec, task_id, args, executor, runner, sessions, settings, announcer, engine)
        if not spec.tracked:
            outcome = await run.untracked()
        elif spec.mode is Mode.ATOMIC and not redelivered:
            outcome = await _once_recorded(run, run.atomic)
        else:
            outcome = await _once_recorded(run, run.leased)
        run.record(outcome, time.monotonic() - began)
        return outcome
    finally:
        current_task_id.reset(token)


# On PostgreSQL the API sends a task's message while its ledger row is being inserted
# (runtime/service.py), so a worker can be handed a task whose row is not there yet. Such a
# delivery claims again after each of these waits (0.9 s in all) before it is dropped: by
# then the insert failed and the API answered 503, or it took so long that the API sends
# the message again (service.RESEND_AFTER_SECONDS). On SQLite the row always comes first.
ROW_WAITS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


async def _once_recorded(run: _Run, attempt: Callable[[], Awaitable[Outcome]]) -> Outcome:
    """``attempt()``, again while the task has no ledger row yet (see ROW_WAITS)."""
    outcome = await attempt()
    recorded = (
        outcome.kind is not Kind.SKIPPED
        or run.spec.scheduled  # beat's sends have no row; the claim adopts them
        or run.atomic_engine.dialect.name == "sqlite"
    )
    waits = iter(ROW_WAITS)
    while not recorded:
        if await run._exists():
            # It may have come between the claim and this look: claim it once more.
            recorded, outcome = True, await attempt()
        elif (delay := next(waits, None)) is None:
            break
        else:
            await asyncio.sleep(delay)
            outcome = await attempt()
            recorded = outcome.kind is not Kind.SKIPPED
    if outcome.kind is not Kind.SKIPPED:
        return outcome
    if recorded:
        log.info(
            "task %s %s: not claimable (finished, cancelled or running elsewhere); skipped",
            run.spec.name,
            run.task_id,
        )
    else:
        log.info(
            "task %s %s: no such task in the ledger (%.1f s after its delivery); dropped",
            run.spec.name,
            run.task_id,
            sum(ROW_WAITS),
        )
    return outcome


# The state an outcome leaves its task in; SKIPPED and LOST leave it to someone else (and
# say so in their own log lines).
_OUTCOME_STATES = {
    Kind.SUCCEEDED: State.SUCCESS,
    Kind.FAILED: State.FAILURE,
    Kind.REVOKED: State.REVOKED,
    Kind.RETRY: State.RETRY,
}


class _SoftLimit(Exception):
    pass


@dataclass
class _Run:
    spec: TaskSpec
    task_id: str
    args: dict[str, Any]
    executor: str
    runner: str
    sessions: ledger.Sessions
    settings: Settings
    announcer: Announcer | None
    atomic_engine: AsyncEngine
    token: str = field(default_factory=lambda: str(uuid.uuid4()))
    attempt: int = 0
    submitted_at: datetime | None = None
    started_at: datetime | None = None  # the first start's, from the claim

    def record(self, outcome: Outcome, seconds: float) -> None:
        """One log line and the metrics of this delivery's outcome (no query: the times
        came back with the claim)."""
        state = _OUTCOME_STATES.get(outcome.kind)
        if state is None:
            return
        name, queue, executor = self.spec.name, self.spec.queue, self.executor
        if state is State.RETRY:
            metrics.TASK_RETRIES.labels(name, queue, executor).inc()
        elif state is not State.REVOKED:  # a cancel is counted where it ends the row
            started = self.started_at
            metrics.task_finished(
                name,
                queue,
                executor,
                state,
                ran=(utcnow() - started).total_seconds() if started else None,
                waited=(
                    (started - self.submitted_at).total_seconds()
                    if started and self.submitted_at
                    else None
                ),
            )
        # The health check's bare round trips would flood the log: DEBUG for those.
        level = logging.INFO if self.spec.tracked else logging.DEBUG
        log.log(level, "task %s %s %s in %.3f s", name, self.task_id, state.value, seconds)

    def _claimed(self, row: Any) -> int:
        self.submitted_at, self.started_at = row.submitted_at, row.started_at
        return int(row.attempts)

    # -- ATOMIC ----------------------------------------------------------------------

    async def atomic(self) -> Outcome:
        try:
            async with self.atomic_engine.connect() as conn, conn.begin() as tx:
                claimed = await ledger.claim_in(conn, **self._claim_args())
                if claimed is None:
                    await tx.rollback()
                    return self._skipped()
                if claimed.recoveries:
                    # Re-sent by the recovery sweep: an earlier try may have died with its
                    # claim rolled back. This one counts (see ``execute``).
                    await tx.rollback()
                    self.token = str(uuid.uuid4())
                    return await self.leased()
                self.attempt = self._claimed(claimed)
                result = await self._body_with_limit(self._context(_joined(conn)))
                # Too large to store: raised here, it rolls the run back (runtime/results.py).
                check_result_size(result, self.settings.max_result_bytes)
                ending = self._ending(State.SUCCESS, result=result)
                ended = await ledger.finish_in(
                    conn, task_id=self.task_id, token=self.token, ending=ending
                )
                if not ended.done:  # cannot happen while we hold the row; be safe
                    await tx.rollback()
                    return Outcome(Kind.LOST)
        except TaskCancelled:
            return Outcome(Kind.REVOKED)
        except _SoftLimit:
            return await self._after_rollback(self._soft_limit_error())
        except Exception as exc:
            if _run_again_leased(exc):
                # Rolled back: nothing of this run happened. A transient error is retried
                # the leased way (backoff, attempts); an InvalidRequestError means the body
                # caught a database error and rolled back, which inside one transaction
                # ends the run, while the leased way commits as it goes and lets the
                # body's handling work.
                log.info("atomic run of %s failed; running it leased", self.task_id, exc_info=True)
                self.token = str(uuid.uuid4())
                return await self.leased()
            # The body failed on its own terms: running it again would fail again.
            log.exception("task %s %s failed", self.spec.name, self.task_id)
            return await self._after_rollback(error_info(exc))
        await self._announce(
            self._event(State.STARTED),
            self._event(State.SUCCESS),
            notice=ended.notice,
        )
        return Outcome(Kind.SUCCEEDED, result=result)

    async def _body_with_limit(self, ctx: TaskContext) -> Any:
        try:
            async with asyncio.timeout(self.settings.task_soft_time_limit) as limit:
                return await self.spec.body(ctx, **self.args)
        except TimeoutError:
            if limit.expired():
                raise _SoftLimit from None
            raise

    async def _after_rollback(self, error: dict[str, Any]) -> Outcome:
        """Record a failure of an atomic run whose transaction was rolled back."""
        self.token = str(uuid.uuid4())
        claimed = await ledger.claim_row(self.sessions, **self._claim_args())
        if claimed is None:
            return self._skipped()
        self.attempt = self._claimed(claimed)
        return await self._fail(error)

    # -- LEASED ----------------------------------------------------------------------

    async def leased(self) -> Outcome:
        claimed = await ledger.claim_row(self.sessions, **self._claim_args())
        if claimed is None and self.spec.scheduled and not await self._exists():
            await ledger.adopt(
                self.sessions,
                task_id=self.task_id,
                name=self.spec.name,
                queue=self.spec.queue,
                args=self.args,
            )
            claimed = await ledger.claim_row(self.sessions, **self._claim_args())
        if claimed is None:
            return self._skipped()
        self.attempt = self._claimed(claimed)
        await self._announce(self._event(State.STARTED))

        ctx = self._context(self.sessions, leased=True)
        body = asyncio.ensure_future(self.spec.body(ctx, **self.args))
        stop = _Stop(body)
        watchdog = asyncio.ensure_future(
            _watch(ctx, stop, self.token, self.sessions, self.settings)
        )
        # The soft time limit is enforced here, on the loop, so it works the same in a
        # worker and in the local executor; Celery's hard limit stays as the backstop for
        # a body that blocks the loop.
        timer = asyncio.get_running_loop().call_later(
            self.settings.task_soft_time_limit, stop, Kind.FAILED
        )
        try:
            result = await body
            # Too large to store: the run ends FAILURE, as for any error of the body.
            check_result_size(result, self.settings.max_result_bytes)
        except asyncio.CancelledError:
            if stop.reason is None:
                raise  # we ourselves are being cancelled (shutdown): the lease will lapse
            if stop.reason is Kind.FAILED:
                return await self._fail(self._soft_limit_error())
            if stop.reason is Kind.LOST:
                return self._lost()
            return Outcome(stop.reason)
        except Exception as exc:
            return await self._settle(exc)
        finally:
            timer.cancel()
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        ended = await ledger.finish(
            self.sessions,
            task_id=self.task_id,
            token=self.token,
            ending=self._ending(State.SUCCESS, result=result),
        )
        if ended.done:
            await self._announce(self._event(State.SUCCESS), notice=ended.notice)
            return Outcome(Kind.SUCCEEDED, result=result)
        # Cancelled (or taken over) while the last unit of work ran: the cancel stands.
        return Outcome(Kind.REVOKED)

    async def _settle(self, exc: Exception) -> Outcome:
        """The outcome of a body that raised, recorded on the row we hold."""
        if isinstance(exc, TaskCancelled):
            return Outcome(Kind.REVOKED)
        if isinstance(exc, LeaseLost):
            return self._lost()
        error = error_info(exc)
        if not is_transient(exc):
            log.exception("task %s %s failed", self.spec.name, self.task_id)
            return await self._fail(error)
        if self.attempt > self.settings.task_max_retries:
            return await self._fail(error)
        countdown = backoff(self.attempt, self.settings.task_retry_backoff_max)
        log.warning(
            "task %s %s: transient %s, retry in %ss", self.spec.name, self.task_id, exc, countdown
        )
        eta = utcnow() + timedelta(seconds=countdown)
        if await ledger.schedule_retry(
            self.sessions, task_id=self.task_id, token=self.token, eta=eta, error=error
        ):
            await self._announce(self._event(State.RETRY, error=error))
            return Outcome(Kind.RETRY, error=error, countdown=countdown)
        return await self._not_ours()

    async def _not_ours(self) -> Outcome:
        """The row we held refused a transition: the run was cancelled, or another runner
        took it over after our lease lapsed (a partition whose end showed up as a dropped
        connection). Decided as the watchdog decides, and said in the log either way."""
        with contextlib.suppress(OperationalError, DBAPIError, OSError):
            if await ledger.cancel_requested(self.sessions, self.task_id):
                return Outcome(Kind.REVOKED)
        return self._lost()

    async def _fail(self, error: dict[str, Any]) -> Outcome:
        ended = await ledger.finish(
            self.sessions,
            task_id=self.task_id,
            token=self.token,
            ending=self._ending(State.FAILURE, error=error),
        )
        if ended.done:
            await self._announce(self._event(State.FAILURE, error=error), notice=ended.notice)
        return Outcome(Kind.FAILED, error=error)

    # -- untracked (the health check's bare round trip) --------------------------------

    async def untracked(self) -> Outcome:
        try:
            result = await self.spec.body(self._context(self.sessions), **self.args)
        except Exception as exc:
            return Outcome(Kind.FAILED, error=error_info(exc))
        return Outcome(Kind.SUCCEEDED, result=result)

    # -- pieces ----------------------------------------------------------------------

    def _claim_args(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "token": self.token,
            "runner": self.runner,
            "executor": self.executor,
            "lease": timedelta(seconds=self.settings.lease_seconds),
        }

    async def _exists(self) -> bool:
        return await ledger.get(self.sessions, self.task_id) is not None

    def _lost(self) -> Outcome:
        log.warning(
            "task %s %s: lease lost (another runner took the run over after ours lapsed); "
            "stopped, and any write not yet committed was refused",
            self.spec.name,
            self.task_id,
        )
        return Outcome(Kind.LOST)

    def _skipped(self) -> Outcome:
        return Outcome(Kind.SKIPPED)  # logged by _once_recorded, which may try again

    def _ending(
        self, state: State, *, result: Any = None, error: dict[str, Any] | None = None
    ) -> ledger.Ending:
        return ledger.Ending(state, notifies(self.spec, state), result=result, error=error)

    def _soft_limit_error(self) -> dict[str, Any]:
        return {
            "type": "SoftTimeLimitExceeded",
            "message": f"ran longer than {self.settings.task_soft_time_limit} s",
        }

    def _event(self, state: State, **fields: Any) -> TaskEvent:
        return TaskEvent(
            self.task_id, self.spec.name, state.value, self.executor, attempt=self.attempt, **fields
        )

    async def _announce(self, *events: TaskEvent, notice: dict[str, Any] | None = None) -> None:
        if self.announcer is None:
            return
        try:
            await self.announcer(*events, notices=[notice] if notice else [])
        except Exception:  # news must never fail the task
            log.warning("could not announce %s", self.task_id, exc_info=True)

    def _context(
        self, sessions: async_sessionmaker[AsyncSession], leased: bool = False
    ) -> TaskContext:
        return TaskContext(
            task_id=self.task_id,
            name=self.spec.name,
            attempt=max(self.attempt, 1),
            executor=self.executor,
            runner=self.runner,
            session_factory=sessions,
            settings=self.settings,
            _write_progress=self._write_progress if leased else _no_progress,
            _probe_cancel=self._probe_cancel if self.spec.tracked else _never_cancelled,
            _publish=self.announcer.publish if self.announcer is not None else None,
            _fence=self._fence if leased else None,
        )

    async def _fence(self, session: AsyncSession) -> None:
        if not await ledger.hold_in(session, task_id=self.task_id, token=self.token):
            await _raise_if_gone(self.sessions, self.task_id)

    async def _write_progress(self, current: int, total: int | None, message: str | None) -> None:
        percent = round(100.0 * current / total, 2) if total else None
        progress = {"current": current, "total": total, "percent": percent, "message": message}
        if not await ledger.set_progress(
            self.sessions, task_id=self.task_id, token=self.token, progress=progress
        ):
            await _raise_if_gone(self.sessions, self.task_id)
        await self._announce(self._event(State.PROGRESS, progress=progress))

    async def _probe_cancel(self) -> bool:
        return await ledger.cancel_requested(self.sessions, self.task_id)


def _joined(conn: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    """Sessions that take part in the run's transaction: their commit commits nothing (the
    run commits once, at the end), a rollback rolls the whole run back."""
    return async_sessionmaker(
        bind=conn, expire_on_commit=False, join_transaction_mode="rollback_only"
    )


async def _no_progress(current: int, total: int | None, message: str | None) -> None:
    """An atomic run is seen whole or not at all: progress in between means nothing."""


async def _never_cancelled() -> bool:
    return False


async def _raise_if_gone(sessions: ledger.Sessions, task_id: str) -> None:
    row = await ledger.get(sessions, task_id)
    if row is not None and row.cancel_requested:
        raise TaskCancelled(task_id)
    raise LeaseLost(task_id)


class _Stop:
    """Stops the body from outside (watchdog, timer) and remembers why."""

    def __init__(self, body: asyncio.Future[Any]) -> None:
        self.body = body
        self.reason: Kind | None = None

    def __call__(self, reason: Kind) -> None:
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
            stop(Kind.REVOKED)
            return
        stop(Kind.LOST)
        return
