"""The Celery side: each worker process's state, task binding, and worker signals.

Every worker process (a prefork child, or the main process with ``--pool solo``) runs task
bodies on one long-lived event loop of its own, kept with its engines, announcer and
settings in a ``WorkerProcess`` on the Celery app; nothing made before a fork is used
after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from celery import Celery, Task, current_app, signals
from celery.exceptions import Ignore
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.config import Settings, get_settings
from backend.constants import PRESENCE_INTERVAL, WORKERS_KEY, Executor
from backend.db import checkpointer
from backend.db.engine import get_atomic_engine, get_session_factory
from backend.log_config import configure_logging
from backend.runtime import metrics, recovery
from backend.runtime.broker import Broker
from backend.runtime.events import Announcer
from backend.runtime.execution import Kind, execute
from backend.runtime.registry import TaskSpec, all_specs
from backend.runtime.stream_writer import StreamWriter

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class WorkerProcess:
    """What one worker process keeps for the bodies it runs: its event loop, its engines and
    session factory, its announcer and its settings. It hangs off the Celery app
    (``app.syncq_process``), the way celery-redbeat keeps its state on the app, and is made
    in the process that uses it: by ``worker_process_init`` in a prefork child, on first
    use in the main process of ``--pool solo``. One made before a fork is never used after
    it (the pid says whose it is)."""

    settings: Settings
    pid: int
    loop: asyncio.AbstractEventLoop
    sessions: async_sessionmaker[AsyncSession]
    atomic_engine: AsyncEngine
    announcer: Announcer

    @classmethod
    def make(cls, app: Celery, settings: Settings) -> WorkerProcess:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        return cls(
            settings=settings,
            pid=os.getpid(),
            loop=loop,
            sessions=get_session_factory(settings),
            atomic_engine=get_atomic_engine(settings.database_url),
            announcer=Announcer(
                StreamWriter(settings.celery_broker_url, settings.broker_probe_timeout)
            ),
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on this process's own long-lived loop."""
        return self.loop.run_until_complete(coro)


def settings_of(app: Celery) -> Settings:
    """The settings the app was made with (``bind_tasks`` keeps them on it)."""
    settings: Settings = app.syncq_settings
    return settings


def process_of(app: Celery) -> WorkerProcess:
    """This process's state on ``app``, made here if it is not this process's yet."""
    state: WorkerProcess | None = getattr(app, "syncq_process", None)
    if state is None or state.pid != os.getpid() or state.loop.is_closed():
        state = WorkerProcess.make(app, settings_of(app))
        app.syncq_process = state
    return state


class TaskBodyFailed(Exception):
    """Raised to Celery so Flower and the result backend show a FAILURE too."""


def bind_tasks(app: Celery, settings: Settings) -> None:
    """Turn every registered spec into a Celery task on its queue (the one registration),
    and keep the settings on the app for the state of each worker process."""
    app.syncq_settings = settings
    for spec in all_specs():
        app.task(
            name=spec.name,
            bind=True,
            queue=spec.queue,
            # The ledger is the one record of results; only the health check's bare round
            # trip (untracked, no ledger row) is answered through the result backend.
            ignore_result=spec.tracked,
        )(_entry(spec))


def _entry(spec: TaskSpec) -> Any:
    def run(self: Task, **kwargs: Any) -> Any:
        state = process_of(self.app)
        outcome = state.run(
            execute(
                spec,
                self.request.id,
                kwargs,
                executor=Executor.CELERY,
                runner=f"{self.request.hostname}:{state.pid}",
                sessions=state.sessions,
                settings=state.settings,
                announcer=state.announcer,
                atomic_engine=state.atomic_engine,
                redelivered=bool((self.request.delivery_info or {}).get("redelivered")),
            )
        )
        if outcome.kind is Kind.SUCCEEDED:
            # A tracked result lives in the ledger; handing it to Celery too would only
            # pickle it through the pool's pipe (and repr it for the log) for nobody.
            return None if spec.tracked else outcome.result
        if outcome.kind is Kind.RETRY:
            raise self.retry(countdown=outcome.countdown, max_retries=None)
        if outcome.kind is Kind.FAILED:
            error = outcome.error or {}
            raise TaskBodyFailed(f"{error.get('type')}: {error.get('message')}")
        raise Ignore()  # skipped, revoked or lost: the ledger already says what happened

    run.__name__ = spec.name.replace(".", "_")
    return run


# -- worker lifecycle ---------------------------------------------------------------------


class _Presence:
    """Keeps this worker's node name in a Redis sorted set that /health counts."""

    def __init__(self, settings: Settings, node: str) -> None:
        self.node = node
        self.client = redis.Redis.from_url(
            settings.celery_broker_url, socket_timeout=1, socket_connect_timeout=1
        )
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="syncq-presence", daemon=True)

    def _loop(self) -> None:
        while not self.stopped.is_set():
            try:
                now = time.time()
                pipe = self.client.pipeline()
                pipe.zadd(WORKERS_KEY, {self.node: now})
                # A silent entry is left for the recovery sweep to notice (and remove):
                # it means a worker died holding messages. Only very old ones go here.
                pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - PRESENCE_KEPT)
                pipe.expire(WORKERS_KEY, PRESENCE_KEPT)
                pipe.execute()
            except redis.RedisError:
                pass
            self.stopped.wait(PRESENCE_INTERVAL)

    def stop(self) -> None:
        self.stopped.set()
        with contextlib.suppress(redis.RedisError):
            self.client.zrem(WORKERS_KEY, self.node)


# A young collection every 10,000 allocations, not 700: a sync's batch (5,000 rows, each a
# list and its prepared tuple) otherwise sets off collections that walk the batch again and
# again. Reading, keying and digesting a 1,000,000-row CSV: 5.5 and 7.2 s with Python's
# default, 4.5 and 4.9 s with this (benchmarks/bench_prepare_rows.py, two runs). Garbage
# without cycles is freed at once either way; this only delays the cycle search.
GC_THRESHOLD = (10_000, 10, 10)

PRESENCE_KEPT = 3600  # seconds a silent worker's entry waits for a sweep to notice it


def _on_process_init(**_: Any) -> None:
    """A prefork child: make its state now, before its first task (the pool has just made
    this app current, see celery.concurrency.prefork.process_initializer)."""
    app = current_app._get_current_object()
    if hasattr(app, "syncq_settings"):
        process_of(app)
    # What the child holds now (Celery, SQLAlchemy, the app: ~150,000 objects) lives as
    # long as it does; frozen, the collector stops walking it each time a task's garbage
    # triggers it. A sync allocates a few objects per row: its collections took 0.78 s
    # per 1,000 before, 0.17 s after, and a 300,000-row sync ran 0.80 -> 1.00 of the raw
    # upsert limit (benchmarks/bench_sync.py).
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    app = sender.app if sender is not None else None
    if app is None or not hasattr(app, "syncq_settings"):
        return
    settings = settings_of(app)
    node = getattr(sender, "hostname", None) or f"worker@{os.getpid()}"
    presence = _Presence(settings, node)
    app.syncq_presence = presence
    # Still listed: the last worker of this name died without leaving (a clean stop
    # removes it), maybe holding messages; the startup sweep re-sends what it might have had.
    try:
        last_seen = presence.client.zscore(WORKERS_KEY, node)
    except redis.RedisError:
        last_seen = None
    presence.thread.start()
    app.syncq_checkpointer = checkpointer.for_database(settings.database_url)
    if app.syncq_checkpointer is not None:
        app.syncq_checkpointer.start()
    try:
        pool = type(getattr(sender, "pool", None)).__module__
        metrics.serve_worker_metrics(settings, prefork="prefork" in pool)
    except OSError:
        log.warning("could not serve worker metrics", exc_info=True)
    _recover_at_start(app, settings, last_seen)


def _recover_at_start(app: Celery, settings: Settings, last_seen: float | None) -> None:
    async def sweep() -> None:
        broker = Broker(settings, app)
        sessions = get_session_factory(settings)
        try:
            report = await recovery.sweep(
                sessions=sessions,
                settings=settings,
                broker=broker,
                dispatch=recovery.broker_dispatch(broker, sessions),
                announcer=Announcer(broker),
                worker_last_seen=last_seen,
            )
            log.info("startup recovery: %d re-dispatched", len(report.redispatched))
        finally:
            await broker.close()

    try:
        process_of(app).run(sweep())
    except Exception:
        log.warning("startup recovery failed", exc_info=True)


def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    presence: _Presence | None = getattr(app, "syncq_presence", None)
    if presence is not None:
        presence.stop()
    checkpoints: checkpointer.Checkpointer | None = getattr(app, "syncq_checkpointer", None)
    if checkpoints is not None:
        checkpoints.stop()
    if hasattr(app, "syncq_settings"):
        metrics.process_exiting(settings_of(app))


def _on_process_shutdown(**_: Any) -> None:
    """A prefork child ends: its live gauges stop counting in the summed metrics."""
    app = current_app._get_current_object()
    if hasattr(app, "syncq_settings"):
        metrics.process_exiting(settings_of(app))


def _on_setup_logging(loglevel: Any = None, **_: Any) -> None:
    """Celery leaves logging alone once someone answers this signal: ours is JSON."""
    settings = get_settings()
    level = logging.getLevelName(loglevel) if isinstance(loglevel, int) else loglevel
    configure_logging(str(level or settings.log_level), settings.log_format)


signals.setup_logging.connect(_on_setup_logging, weak=False)
signals.worker_process_init.connect(_on_process_init, weak=False)
signals.worker_ready.connect(_on_worker_ready, weak=False)
signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)
signals.worker_process_shutdown.connect(_on_process_shutdown, weak=False)
