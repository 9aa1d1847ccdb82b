"""What a task body receives: its session factory, progress reporting and cancellation.

The same object is handed over by the Celery worker and by the local executor, so a body
never knows (or cares) where it runs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from backend.config import Settings


class TaskCancelled(Exception):
    """Raised at a checkpoint once the task was cancelled; the task ends REVOKED."""


class TransientError(Exception):
    """Raise (or wrap) to ask for a retry with exponential backoff instead of a FAILURE."""


class LeaseLost(Exception):
    """Another runner took the task over (our lease expired); stop without writing."""


ProgressWriter = Callable[[int, int | None, str | None], Awaitable[None]]
CancelProbe = Callable[[], Awaitable[bool]]
Publisher = Callable[[str, dict[str, Any]], Awaitable[None]]
Fence = Callable[[AsyncSession], Awaitable[None]]


@dataclass
class TaskContext:
    task_id: str
    name: str
    attempt: int
    executor: str
    runner: str
    session_factory: async_sessionmaker[AsyncSession]
    # The settings of whoever runs the body (worker, API, test harness): bodies read these,
    # never get_settings(), so an app built with its own settings runs bodies with them.
    settings: Settings
    _write_progress: ProgressWriter
    _probe_cancel: CancelProbe
    _publish: Publisher | None = None
    # None when the body runs inside the claim's own transaction (an atomic run): nobody
    # can take the run over before that transaction ends, so there is nothing to prove.
    _fence: Fence | None = None
    cancel_check_interval: float = 1.0
    _cancelled: bool = False
    _last_probe: float = field(default=0.0)

    def session(self) -> AsyncSession:
        return self.session_factory()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction, for a body that needs no ORM object: in an atomic
        run the run's own (its writes commit with the run's ending, as a session's do),
        otherwise a transaction of its own, committed when the block ends.

        Unlike a session joined to an atomic run, a failed statement does not mark the run
        for rollback by itself: let the error end the body (the run then rolls back
        whole), rather than catch it and go on writing.

        A session costs its begin, commit and close even when it joins the run's
        transaction: a conversation save with BEGIN and COMMIT took 167 µs through one and
        64 µs on the connection (a /tmp loop of 3,000 saves, atomic engine, three rounds),
        time the run holds SQLite's write lock."""
        bind = self.session_factory.kw["bind"]
        if isinstance(bind, AsyncConnection):
            yield bind
        else:
            async with bind.begin() as conn:
                yield conn

    async def progress(
        self, current: int, total: int | None = None, message: str | None = None
    ) -> None:
        await self._write_progress(current, total, message)

    async def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Put an event of this kind on the events stream (best effort)."""
        if self._publish is not None:
            await self._publish(kind, data)

    async def hold(self, session: AsyncSession) -> None:
        """Call inside each transaction that writes data, just before it commits.

        Raises ``LeaseLost`` (or ``TaskCancelled``) when this run no longer holds its claim:
        its lease lapsed (a stall, a partition) and a successor took over, or it was
        cancelled. The transaction then rolls back, so a runner that lost its lease writes
        nothing beside the one that replaced it."""
        if self._fence is not None:
            await self._fence(session)

    def mark_cancelled(self) -> None:
        self._cancelled = True

    async def checkpoint(self) -> None:
        """Call between units of work: raises TaskCancelled once a cancel was requested.

        The ledger is read at most once per ``cancel_check_interval`` so a tight loop of
        checkpoints costs nothing; the runner's heartbeat also sets the flag.
        """
        now = time.monotonic()
        if not self._cancelled and now - self._last_probe >= self.cancel_check_interval:
            self._last_probe = now
            if await self._probe_cancel():
                self._cancelled = True
        if self._cancelled:
            raise TaskCancelled(self.task_id)


def error_info(exc: BaseException) -> dict[str, Any]:
    """The ``error`` object of the status contract: a type and a readable message."""
    return {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__}
