"""The runtime: the only door between HTTP and tasks (submit, status, cancel, wait, recover).

The API process makes one ``Runtime`` in its lifespan; a worker makes one without the
local executor to run the recovery sweep. See docs/runtime.md for the ledger's states and
the Redis keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from celery import Celery
from sqlalchemy import Row, text

from backend.config import Settings
from backend.constants import FINAL_STATES, Executor, State, TaskName
from backend.db import checkpointer
from backend.db.engine import get_session_factory
from backend.db.models import TaskRun
from backend.db.models.base import utcnow
from backend.runtime import inspect, ledger, metrics, recovery, schedules
from backend.runtime.broker import Broker
from backend.runtime.events import Announcer, Item, TaskEvent
from backend.runtime.hub import EventHub
from backend.runtime.inspect import WorkerView
from backend.runtime.local import ExecutorFull, LocalExecutor
from backend.runtime.recovery import RecoveryReport
from backend.runtime.registry import get_spec, notifies
from backend.runtime.schedules import ScheduleEntry

log = logging.getLogger(__name__)


class TaskNotFound(LookupError):
    pass


class TaskAlreadyFinished(Exception):
    def __init__(self, run: TaskRun) -> None:
        super().__init__(f"task {run.id} already ended {run.state}")
        self.run = run


class NoWorkerAnswered(Exception):
    pass


class TaskFailed(Exception):
    """A task the caller waited for ended FAILURE or REVOKED."""

    def __init__(self, run: TaskRun) -> None:
        error = run.error or {}
        super().__init__(f"task {run.id} ended {run.state}: {error.get('message', '')}")
        self.run = run


@dataclass(frozen=True)
class Submission:
    run: TaskRun | ledger.NewRun
    created: bool


@dataclass
class StatusView:
    """A task's ledger row as the status contract shows it, with an ETag that changes
    whenever anything shown changes. ``rendered``: the answer's bytes, kept here by whoever
    renders it, so a cached final view is rendered once."""

    row: Any
    etag: str
    final: bool
    rendered: bytes | None = None


# A final status never changes (final states are never left), so the status of a finished
# task is served from memory for a while: the poll of a finished task is the hottest read
# there is. The row can still vanish (the ledger's purge, days later): a 404 comes at most
# FINAL_VIEW_SECONDS late.
FINAL_VIEW_SECONDS = 10.0
FINAL_VIEWS_KEPT = 10_000
THROUGHPUT_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class QueueView:
    broker_up: bool
    queues: dict[str, int]
    unacked: int | None
    local_held: int
    local_capacity: int


@dataclass(frozen=True)
class Health:
    broker_up: bool
    database_up: bool
    workers: int

    @property
    def executor(self) -> str:
        return Executor.CELERY if self.broker_up else Executor.LOCAL


# An insert slower than this, with the message already out: a worker given the message may
# have given up waiting for the row (execution.ROW_WAITS, 0.9 s from its first claim), so
# it is sent again.
RESEND_AFTER_SECONDS = 0.4


async def _settled(future: asyncio.Future[Any]) -> None:
    """Wait for ``future`` and drop its outcome (a send nobody answers for any more)."""
    with contextlib.suppress(Exception):
        await future


async def _shielded(future: asyncio.Future[str], spawn: Callable[[Any], None]) -> str:
    """``future``'s result; cancelled meanwhile, it goes on, settled in the background."""
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        spawn(_settled(future))
        raise


class Runtime:
    def __init__(self, settings: Settings, celery: Celery, *, local_fallback: bool = True) -> None:
        self.settings = settings
        self.celery = celery
        self.sessions = get_session_factory(settings)
        self.inserter = ledger.Inserter(self.sessions)
        self.broker = Broker(settings, celery)
        self.local = LocalExecutor(settings, self.sessions) if local_fallback else None
        # SQLite: the WAL's checkpoints on a thread (the API's inserts never checkpoint).
        self.checkpointer = checkpointer.for_database(settings.database_url)
        # Only a process with a local executor (the API) has listeners of its own.
        self.hub = EventHub(self.broker) if local_fallback else None
        self.announcer = Announcer(self.broker, fallback=self.hub)
        if self.local is not None:
            self.local.announcer = self.announcer
        self._background: set[asyncio.Task[Any]] = set()
        # PostgreSQL: a submission sends the task's message while its ledger row is being
        # inserted (a worker handed it first waits for the row: execution.ROW_WAITS), and
        # answers once both are done. 1-connection saves through wrk, worker draining, a
        # syncq stack alone: 167-216 against 142-184 a second (six 10-s runs each,
        # alternating; bench_against_plain's pairs were mixed, see RESULTS.md). On SQLite
        # the insert then waited on the worker's claim for the one write lock (1.0-1.1 ms
        # -> 1.6-1.8 ms a save) and the rate did not move, so there the row comes first.
        self._send_while_inserting = not settings.is_sqlite
        # Set by a failed insert, cleared by the next that succeeds: meanwhile the message
        # waits for the row, so a struggling database gets no messages for rows it refused.
        self._inserts_failing = False
        self._final_views: dict[str, tuple[float, StatusView]] = {}
        self._reads: dict[str, asyncio.Future[StatusView]] = {}
        self._throughput: dict[int, tuple[float, list[tuple[str, str, int]]]] = {}

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, *, sweep: bool = True) -> None:
        await self.broker.probe()
        if self.local is not None:
            self.local.start()
            if self.checkpointer is not None:
                self.checkpointer.start()
        self._spawn(self._watch_broker())
        if self.hub is not None:
            self._spawn(self.hub.follow())
        if sweep:
            self._spawn(self._sweep_forever())

    async def stop(self) -> None:
        for t in list(self._background):
            t.cancel()
        for t in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.local is not None:
            await self.local.stop()
        if self.hub is not None:
            await self.hub.close()
        await self.inserter.close()
        if self.checkpointer is not None:
            self.checkpointer.stop()
        await self.broker.close()
        metrics.process_exiting(self.settings)

    def _spawn(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    async def _watch_broker(self) -> None:
        """Keep the cached broker health fresh so the request path only ever reads it."""
        while True:
            await asyncio.sleep(self.settings.broker_probe_ttl / 2)
            await self.broker.probe()
            if self.local is not None:  # each API process's share of the summed gauge
                metrics.set_local_fill(self.local.held_count, self.settings.local_queue_size)

    async def _sweep_forever(self) -> None:
        """Recovery at every interval; and while Redis is down (so no beat can fire), the
        scheduled purges too, on the local executor, so a long outage still purges."""
        last_cleanup = asyncio.get_running_loop().time()
        while True:
            try:
                await self.recover()
            except Exception:
                log.warning("recovery sweep failed", exc_info=True)
            now = asyncio.get_running_loop().time()
            if (
                self.local is not None
                and not self.broker.up
                and now - last_cleanup >= self.settings.schedule_cleanup_seconds
            ):
                last_cleanup = now
                for name in (
                    TaskName.PURGE_CONVERSATIONS,
                    TaskName.PURGE_TASK_RUNS,
                    TaskName.SWEEP_UPLOADS,
                    TaskName.PURGE_EXPORTS,
                ):
                    try:
                        await self.submit(name)
                    except Exception:
                        log.warning("local %s failed to start", name, exc_info=True)
            await asyncio.sleep(self.settings.recovery_interval_seconds)

    # -- submit ----------------------------------------------------------------------

    async def submit(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        priority: int = 5,
        idempotency_key: str | None = None,
    ) -> Submission:
        """Record the task and hand it to Celery, or to the local executor if Redis is down.

        Once this returns the row is in the ledger, so the task cannot be lost. On SQLite
        the row is written before the message is sent; on PostgreSQL both at once (see
        ``_send_while_inserting``).
        """
        spec = get_spec(name)
        args = args or {}
        broker_up = self.broker.up
        if not broker_up and (self.local is None or not self.local.has_capacity):
            raise ExecutorFull("the broker is down and the local executor is full")
        key = f"{name}:{idempotency_key}" if idempotency_key else None
        task_id = str(uuid.uuid4())
        # The event goes out with the message when Celery takes it (one round trip).
        events = [("task", TaskEvent(task_id, name, State.PENDING, Executor.CELERY).as_dict())]
        sent: asyncio.Future[str] | None = None
        concurrent = self._send_while_inserting and not self._inserts_failing
        if concurrent and broker_up and key is None and not spec.scheduled:
            # Only a new task (no idempotency key: its row is always created) and not one
            # beat also sends (a worker adopts those when their row is missing).
            sent = asyncio.ensure_future(
                self._dispatch(task_id, name, spec.queue, args, priority, events=events)
            )
        loop = asyncio.get_running_loop()
        inserting = loop.time()
        try:
            run, created = await ledger.insert_run(
                self.sessions,
                self.inserter,
                task_id=task_id,
                name=name,
                queue=spec.queue,
                args=args,
                priority=priority,
                executor=Executor.CELERY if broker_up else Executor.LOCAL,
                idempotency_key=key,
                idempotency_ttl=timedelta(seconds=self.settings.idempotency_ttl_seconds),
            )
        except BaseException as exc:
            if isinstance(exc, Exception):
                self._inserts_failing = True
            if sent is not None:
                # Most likely no row (a worker drops the message after its waits); should
                # the insert have committed after all (its reply lost, a request cancelled
                # while the group commit went on), the row is PENDING for the sweep.
                self._spawn(_settled(sent))
            raise
        self._inserts_failing = False
        if not created:
            return Submission(run, created=False)
        try:
            if sent is None:
                executor = await self._dispatch(
                    run.id, name, spec.queue, args, priority, events=events
                )
            else:
                # The row is in: a cancelled request must not cut the send off.
                executor = await _shielded(sent, self._spawn)
                if loop.time() - inserting > RESEND_AFTER_SECONDS:
                    # A worker handed the message early may have dropped it by now
                    # (execution.ROW_WAITS): send it again; a second claim finds it taken.
                    # Should this one find no taker, the first send stands.
                    with contextlib.suppress(ExecutorFull):
                        executor = await self._dispatch(run.id, name, spec.queue, args, priority)
        except ExecutorFull as exc:
            error = {"type": "ExecutorFull", "message": str(exc)}
            await ledger.fail_unclaimed(self.sessions, task_id=run.id, error=error, notify=False)
            raise
        if executor != run.executor:
            await ledger.mark_dispatched(self.sessions, task_id=run.id, executor=executor)
            run.executor = executor
        metrics.TASKS_SUBMITTED.labels(name, spec.queue, executor).inc()
        if executor != Executor.CELERY:
            await self._announce(TaskEvent(run.id, name, run.state, executor))
        return Submission(run, created=True)

    async def _announce(self, event: TaskEvent, *, notice: dict[str, Any] | None = None) -> None:
        try:
            await self.announcer(event, notices=[notice] if notice else [])
        except Exception:  # news must never fail the request
            log.warning("could not announce %s %s", event.state, event.task_id, exc_info=True)

    async def _dispatch(
        self,
        task_id: str,
        name: str,
        queue: str,
        args: dict[str, Any],
        priority: int,
        events: Sequence[Item] = (),
    ) -> str:
        """Celery when Redis takes the message (and ``events``, in the same round trip),
        else the local executor; the caller announces a local run itself."""
        if self.broker.up and await self.broker.publish(
            name=name, task_id=task_id, kwargs=args, queue=queue, priority=priority, events=events
        ):
            return Executor.CELERY
        if self.local is None:
            raise ExecutorFull("the broker is down and this process has no local executor")
        self.local.submit(task_id, name, args)
        return Executor.LOCAL

    # -- read ------------------------------------------------------------------------

    async def status(self, task_id: str) -> TaskRun:
        run = await ledger.get(self.sessions, task_id)
        if run is None:
            raise TaskNotFound(task_id)
        return run

    async def status_view(
        self, task_id: str, *, wait: float = 0.0, known: str | None = None
    ) -> StatusView:
        """The status, or with ``wait`` a long poll: it answers as soon as the status differs
        from ``known`` (the client's ETag; without one, from the status as it stood when
        asked) or the task is final, and at the latest after ``wait`` seconds."""
        view = await self._view(task_id)
        if wait <= 0 or view.final or (known is not None and view.etag != known):
            return view
        baseline = known or view.etag
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        delay = 0.02
        while loop.time() < deadline:
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            view = await self._view(task_id)
            if view.etag != baseline or view.final:
                return view
            delay = min(delay * 1.5, 0.25)
        return view

    async def _view(self, task_id: str) -> StatusView:
        now = time.monotonic()
        kept = self._final_views.get(task_id)
        if kept is not None and kept[0] > now:
            return kept[1]
        # Polls of one task that arrive while its row is being read share that read: when
        # a finished task's kept view lapses under 100 polling connections, each of them
        # would otherwise queue for a pooled connection (PostgreSQL) at the same moment.
        reading = self._reads.get(task_id)
        if reading is None:
            reading = self._reads[task_id] = asyncio.ensure_future(self._read_view(task_id))
            reading.add_done_callback(partial(self._read_done, task_id))
        return await asyncio.shield(reading)

    def _read_done(self, task_id: str, reading: asyncio.Future[StatusView]) -> None:
        self._reads.pop(task_id, None)
        if not reading.cancelled():
            # Mark its error retrieved: when every poll waiting on it was cancelled (their
            # clients left), asyncio would log it as never retrieved.
            reading.exception()

    async def _read_view(self, task_id: str) -> StatusView:
        now = time.monotonic()
        row = await ledger.status_row(self.sessions, task_id)
        if row is None:
            raise TaskNotFound(task_id)
        fingerprint = hashlib.blake2b(repr(tuple(row)).encode(), digest_size=8).hexdigest()
        view = StatusView(row, f'"{fingerprint}"', row.state in FINAL_STATES)
        if view.final:
            self._final_views.pop(task_id, None)
            self._final_views[task_id] = (now + FINAL_VIEW_SECONDS, view)
            if len(self._final_views) > FINAL_VIEWS_KEPT:  # the oldest entry goes first
                del self._final_views[next(iter(self._final_views))]
        return view

    async def wait(self, task_id: str, timeout: float) -> TaskRun:
        """The task as soon as it is final, or as it stands when ``timeout`` runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        delay = 0.01
        while True:
            run = await self.status(task_id)
            if run.state in FINAL_STATES or loop.time() >= deadline:
                return run
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 1.5, 0.2)

    async def finished_per_minute(self, minutes: int) -> list[tuple[str, str, int]]:
        """The ledger's finishes per minute and state over the last ``minutes``; one query
        per THROUGHPUT_CACHE_SECONDS, however many dashboards ask."""
        now = time.monotonic()
        cached = self._throughput.get(minutes)
        if cached is not None and now - cached[0] < THROUGHPUT_CACHE_SECONDS:
            return cached[1]
        since = utcnow().replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
        counts = await ledger.finished_per_minute(self.sessions, since=since)
        self._throughput[minutes] = (now, counts)
        return counts

    async def recent(
        self, *, state: str | None = None, name: str | None = None, limit: int = 50
    ) -> list[Row[Any]]:
        """The newest runs, as summaries: every status column but ``result``."""
        return await ledger.recent(self.sessions, state=state, name=name, limit=limit)

    # -- cancel ----------------------------------------------------------------------

    async def cancel(self, task_id: str) -> TaskRun:
        run = await self.status(task_id)
        if run.state in FINAL_STATES:
            raise TaskAlreadyFinished(run)
        ended = await ledger.request_cancel(
            self.sessions, task_id, notify=notifies(get_spec(run.name), State.REVOKED)
        )
        if not ended.done:
            run = await self.status(task_id)  # it finished in the meantime
            raise TaskAlreadyFinished(run)
        if run.executor == Executor.CELERY and self.broker.up:
            # Best effort, off the request path: the ledger flag is what makes cancel stick.
            self._spawn(asyncio.to_thread(self.celery.control.revoke, task_id))
        run = await self.status(task_id)
        # Every cancel ends its row here (a running body stops later, uncounted).
        metrics.task_finished(
            run.name, run.queue, run.executor, State.REVOKED, ran=None, waited=None
        )
        await self._announce(
            TaskEvent(run.id, run.name, run.state, run.executor, run.progress, run.error),
            notice=ended.notice,
        )
        return run

    # -- recovery --------------------------------------------------------------------

    async def recover(self, *, worker_last_seen: float | None = None) -> RecoveryReport:
        """The recovery sweep (runtime/recovery.py), re-sending through Celery or, with
        Redis down, to this process's local executor."""
        return await recovery.sweep(
            sessions=self.sessions,
            settings=self.settings,
            broker=self.broker,
            dispatch=self._redispatch,
            announcer=self.announcer,
            worker_last_seen=worker_last_seen,
        )

    async def _redispatch(self, orphan: ledger.Orphan) -> str | None:
        try:
            executor = await self._dispatch(
                orphan.id, orphan.name, orphan.queue, orphan.args, orphan.priority
            )
        except ExecutorFull:
            return None
        await ledger.mark_dispatched(self.sessions, task_id=orphan.id, executor=executor)
        return executor

    # -- operators' views (what routers/system.py and routers/schedules.py show) --------

    async def worker_views(self) -> tuple[bool, list[WorkerView]]:
        """Whether Redis is up, and every worker: broadcast answers and presence beats."""
        return self.broker.up, await inspect.workers(self.broker)

    async def queue_view(self) -> QueueView:
        lengths = await inspect.queue_lengths(self.broker) if self.broker.up else None
        return QueueView(
            broker_up=lengths is not None,
            queues=dict(lengths[0]) if lengths else {},
            unacked=lengths[1] if lengths else None,
            local_held=self.local.held_count if self.local is not None else 0,
            local_capacity=self.settings.local_queue_size,
        )

    async def metrics_text(self) -> bytes:
        """``GET /metrics``: every process's counters and histograms (runtime/metrics.py),
        and the queue depths, local executor fill and broker health as they are now."""
        view = await self.queue_view()
        return metrics.render(
            self.settings,
            metrics.LiveValues(
                broker_up=view.broker_up,
                queues=view.queues,
                unacked=view.unacked,
                local_held=view.local_held,
                local_capacity=view.local_capacity if self.local is not None else 0,
            ),
        )

    async def schedule_entries(self, timeout: float = 3.0) -> list[ScheduleEntry]:
        """The RedBeat entries; RedBeat's client blocks, so it runs in a thread."""
        async with asyncio.timeout(timeout):
            return await asyncio.to_thread(
                schedules.read_entries, self.celery, redis_up=self.broker.up
            )

    async def run_schedule(self, name: str) -> Submission:
        """Submit a schedule entry's task now; UnknownSchedule when there is no such entry."""
        entry = schedules.definition(self.celery, name)
        return await self.submit(entry["task"], dict(entry.get("kwargs") or {}))

    # -- health ----------------------------------------------------------------------

    async def health(self) -> Health:
        broker_up = self.broker.up
        workers = await self.broker.worker_count() if broker_up else 0
        return Health(broker_up, await self._database_up(), workers)

    async def _database_up(self) -> bool:
        try:
            async with asyncio.timeout(2.0), self.sessions() as session:
                await session.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def roundtrip(self, name: str, timeout: float) -> Any:
        """Send an untracked task straight to a worker and wait for its answer."""
        spec = get_spec(name)
        if not self.broker.up:
            raise NoWorkerAnswered("the broker is down")
        task_id = str(uuid.uuid4())
        if not await self.broker.publish(
            name=name, task_id=task_id, kwargs={}, queue=spec.queue, priority=9, keep_result=True
        ):
            raise NoWorkerAnswered("the broker refused the message")
        result = self.celery.AsyncResult(task_id)
        try:
            return await asyncio.to_thread(result.get, timeout=timeout, propagate=True)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.celery.control.revoke, task_id)
            raise NoWorkerAnswered(f"no worker answered within {timeout:g} s") from exc
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(result.forget)
