"""The local executor: runs task bodies on the API process's event loop when Redis is down.

It is a first-class executor, not a test hack: bounded concurrency, a bounded queue
(``ExecutorFull`` becomes 429 with Retry-After), the same ``execute`` as a Celery worker,
retries with backoff, and a heartbeat on every task it holds (queued or running) so that if
this process dies, the recovery sweep sees the silence and re-dispatches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

from backend.config import Settings
from backend.constants import Executor
from backend.runtime import ledger
from backend.runtime.events import Announcer
from backend.runtime.execution import Kind, execute
from backend.runtime.registry import get_spec

log = logging.getLogger(__name__)


class ExecutorFull(Exception):
    """The local queue is at capacity; the client should retry later."""


class LocalExecutor:
    def __init__(self, settings: Settings, sessions: ledger.Sessions) -> None:
        self.settings = settings
        self.sessions = sessions
        self.runner = f"local@{socket.gethostname()}:{os.getpid()}"
        self.announcer: Announcer | None = None  # set by the Runtime, which owns the hub
        self._queue: asyncio.Queue[tuple[str, str, dict[str, Any]]] = asyncio.Queue()
        self._held: set[str] = set()  # queued, running or waiting for a retry
        self._workers: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._workers = [
            asyncio.ensure_future(self._work()) for _ in range(self.settings.local_concurrency)
        ]
        self._workers.append(asyncio.ensure_future(self._heartbeat()))

    async def stop(self) -> None:
        for t in [*self._workers, *self._timers]:
            t.cancel()
        for t in [*self._workers, *self._timers]:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._workers.clear()

    @property
    def has_capacity(self) -> bool:
        return len(self._held) < self.settings.local_queue_size

    @property
    def held_count(self) -> int:
        return len(self._held)

    def holds(self, task_id: str) -> bool:
        return task_id in self._held

    def submit(self, task_id: str, name: str, args: dict[str, Any]) -> None:
        if task_id in self._held:
            return
        if not self.has_capacity:
            raise ExecutorFull(f"local executor queue is full ({self.settings.local_queue_size})")
        self._held.add(task_id)
        self._queue.put_nowait((task_id, name, args))

    async def _work(self) -> None:
        while True:
            task_id, name, args = await self._queue.get()
            try:
                outcome = await execute(
                    get_spec(name),
                    task_id,
                    args,
                    executor=Executor.LOCAL,
                    runner=self.runner,
                    sessions=self.sessions,
                    settings=self.settings,
                    announcer=self.announcer,
                )
            except Exception:
                # The database went away under us; the lease will lapse and the sweep
                # will pick the task up again.
                log.exception("local run of %s failed before recording an outcome", task_id)
                self._held.discard(task_id)
                continue
            if outcome.kind is Kind.RETRY:
                self._retry_later(task_id, name, args, outcome.countdown)
                continue
            self._held.discard(task_id)

    def _retry_later(self, task_id: str, name: str, args: dict[str, Any], delay: float) -> None:
        async def later() -> None:
            await asyncio.sleep(delay)
            self._queue.put_nowait((task_id, name, args))

        timer = asyncio.ensure_future(later())
        self._timers.add(timer)
        timer.add_done_callback(self._timers.discard)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                await ledger.heartbeat_waiting(self.sessions, list(self._held))
            except Exception:
                log.warning("local executor heartbeat failed", exc_info=True)
