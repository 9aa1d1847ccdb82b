"""The Celery side: per-process event loop and engine, task binding, and worker signals.

Every worker process (a prefork child, or the main process with ``--pool solo``) runs task
bodies on one long-lived event loop of its own, made lazily in that process; engines are
keyed by pid (db/engine.py), so nothing made before a fork is ever used after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import redis
from celery import Celery, Task, signals
from celery.exceptions import Ignore

from backend.config import Settings, get_settings
from backend.constants import PRESENCE_INTERVAL, WORKERS_KEY, Executor
from backend.db.engine import get_atomic_engine, get_session_factory
from backend.log_config import configure_logging
from backend.runtime import recovery
from backend.runtime.broker import Broker
from backend.runtime.events import Announcer
from backend.runtime.execution import Kind, execute
from backend.runtime.registry import TaskSpec, all_specs

log = logging.getLogger(__name__)
T = TypeVar("T")

_loops: dict[int, asyncio.AbstractEventLoop] = {}


def run_in_worker_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on this process's own long-lived loop."""
    pid = os.getpid()
    loop = _loops.get(pid)
    if loop is None or loop.is_closed():
        loop = _loops[pid] = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
    return loop.run_until_complete(coro)


_announcers: dict[int, Announcer] = {}


def worker_announcer(app: Celery, settings: Settings) -> Announcer:
    """This process's announcer (its own Redis connection, made after the fork)."""
    pid = os.getpid()
    announcer = _announcers.get(pid)
    if announcer is None:
        announcer = _announcers[pid] = Announcer(Broker(settings, app))
    return announcer


class TaskBodyFailed(Exception):
    """Raised to Celery so Flower and the result backend show a FAILURE too."""


def bind_tasks(app: Celery, settings: Settings) -> None:
    """Turn every registered spec into a Celery task on its queue (the one registration)."""
    for spec in all_specs():
        app.task(
            name=spec.name,
            bind=True,
            queue=spec.queue,
            # The ledger is the one record of results; only the health check's bare round
            # trip (untracked, no ledger row) is answered through the result backend.
            ignore_result=spec.tracked,
        )(_entry(spec, settings))


def _entry(spec: TaskSpec, settings: Settings) -> Any:
    def run(self: Task, **kwargs: Any) -> Any:
        runner = f"{self.request.hostname}:{os.getpid()}"
        outcome = run_in_worker_loop(
            execute(
                spec,
                self.request.id,
                kwargs,
                executor=Executor.CELERY,
                runner=runner,
                sessions=get_session_factory(settings),
                settings=settings,
                announcer=worker_announcer(self.app, settings),
                atomic_engine=get_atomic_engine(settings.database_url),
                redelivered=bool((self.request.delivery_info or {}).get("redelivered")),
            )
        )
        if outcome.kind is Kind.SUCCEEDED:
            return outcome.result
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


_presence: _Presence | None = None
PRESENCE_KEPT = 3600  # seconds a silent worker's entry waits for a sweep to notice it


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    global _presence
    settings = get_settings()
    node = getattr(sender, "hostname", None) or f"worker@{os.getpid()}"
    _presence = _Presence(settings, node)
    # Still listed: the last worker of this name died without leaving (a clean stop
    # removes it), maybe holding messages; the startup sweep re-sends what it might have had.
    try:
        last_seen = _presence.client.zscore(WORKERS_KEY, node)
    except redis.RedisError:
        last_seen = None
    _presence.thread.start()
    _recover_at_start(sender.app if sender is not None else None, settings, last_seen)


def _recover_at_start(app: Celery | None, settings: Settings, last_seen: float | None) -> None:
    if app is None:
        return

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
        run_in_worker_loop(sweep())
    except Exception:
        log.warning("startup recovery failed", exc_info=True)


def _on_worker_shutdown(**_: Any) -> None:
    if _presence is not None:
        _presence.stop()


def _on_setup_logging(loglevel: Any = None, **_: Any) -> None:
    """Celery leaves logging alone once someone answers this signal: ours is JSON."""
    settings = get_settings()
    level = logging.getLevelName(loglevel) if isinstance(loglevel, int) else loglevel
    configure_logging(str(level or settings.log_level), settings.log_format)


signals.setup_logging.connect(_on_setup_logging, weak=False)
signals.worker_ready.connect(_on_worker_ready, weak=False)
signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)
