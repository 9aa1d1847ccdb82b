"""Queries on the task ledger (``task_runs``), the one table the runtime owns.

Every transition is a single conditional UPDATE, so two processes racing on one row (a
duplicate delivery, a sweep and a runner, a cancel and a finish) can never both win, and
no transition waits on a read-then-write. Final states are never left.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import asyncpg
from sqlalchemy import (
    Row,
    and_,
    bindparam,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from backend.constants import FINAL_STATES, RUNNING_STATES, WAITING_STATES, Executor, State
from backend.db.engine import get_autocommit_engine, get_insert_engine, get_read_engine
from backend.db.models import Notification, TaskRun
from backend.db.models.base import utcnow
from backend.db.prepared import Prepared
from backend.db.queries import notifications
from backend.db.sqlite_inline import InlineConnection
from backend.db.sqlite_lock import POLL_SECONDS, WriteLockWatch

log = logging.getLogger(__name__)

Sessions = async_sessionmaker[AsyncSession]


async def get(sessions: Sessions, task_id: str) -> TaskRun | None:
    async with sessions() as session:
        return await session.get(TaskRun, task_id)


_STATUS_COLUMNS = (
    TaskRun.id,
    TaskRun.name,
    TaskRun.queue,
    TaskRun.state,
    TaskRun.progress,
    TaskRun.result,
    TaskRun.error,
    TaskRun.executor,
    TaskRun.attempts,
    TaskRun.submitted_at,
    TaskRun.started_at,
    TaskRun.finished_at,
)


# The statements a short task and a status poll run, built once: building a Core
# statement costs ~5x executing a prebuilt one (345 against 69 µs for the claim, measured).
_STATUS = select(*_STATUS_COLUMNS).where(TaskRun.id == bindparam("task_id"))


async def status_row(sessions: Sessions, task_id: str) -> Row[Any] | None:
    """What the status contract shows of one run: one primary-key read, no transaction, no
    ORM object (the status poll is the hottest read there is)."""
    async with get_read_engine(_url(sessions)).connect() as conn:
        result = await conn.execute(_STATUS, {"task_id": task_id})
        return result.first()


def _literal(states: frozenset[str]) -> list[Any]:
    """The states written into the SQL itself. A list of bound values is an "expanding"
    parameter that SQLAlchemy renders again at every execution: 50 to 60 µs a statement
    (measured), and the claim has two of them."""
    return [literal_column(f"'{State(state).value}'") for state in sorted(states)]


LOCK_TRIES = 50
LOCK_WAIT_SECONDS = 0.5


class Inserter:
    """Group commit for new ledger rows: whatever arrives while one commit is in flight
    goes into the next, as one multi-row INSERT in one transaction.

    Under concurrent submissions this turns N lock acquisitions and N commits into a few,
    which matters most on SQLite, where every commit takes the single writer lock.
    """

    def __init__(self, sessions: Sessions, max_batch: int = 500) -> None:
        self.sessions = sessions
        self.max_batch = max_batch
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        # The one connection the driver-level writes use, kept between them: sqlite3's
        # (lock-free writes) or asyncpg's.
        self._kept: tuple[AsyncConnection, Any] | None = None
        self._closed = False
        self._watch: WriteLockWatch | None = None

    async def add(self, values: dict[str, Any]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((values, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        await future

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            try:
                await self._write([values for values, _ in batch])
            except IntegrityError:
                # One row broke a constraint (an idempotency key raced): settle each alone.
                for values, future in batch:
                    try:
                        await self._write([values])
                    except Exception as exc:
                        _settle(future, exc)
                    else:
                        _settle(future, None)
            except Exception as exc:
                for _, future in batch:
                    _settle(future, exc)
            else:
                for _, future in batch:
                    _settle(future, None)

    async def _write(self, rows: list[dict[str, Any]]) -> None:
        url = _url(self.sessions)
        engine = get_insert_engine(url)
        if url.startswith("sqlite"):
            # Another process holds the write lock for a few hundred microseconds a task.
            # Trying again as soon as the kernel says it is free (db/sqlite_lock.py) gets
            # it sooner than SQLite's own busy wait, which sleeps 1, 2, 5, 10 ms ...
            # between tries, or a 1-ms timer on the loop.
            loop = asyncio.get_running_loop()
            deadline, free = loop.time() + LOCK_WAIT_SECONDS, False
            for _ in range(LOCK_TRIES):
                tried = await self._write_if_lock_free(engine, rows)
                if self._watch is None:  # the first write: its connection keeps the -shm file
                    self._watch = WriteLockWatch(engine.url.database or ":memory:")
                    self._watch.start()
                if tried is _Try.WRITTEN:
                    return
                left = deadline - loop.time()
                if tried is _Try.REFUSED or left <= 0:
                    break
                if free:  # busy, though the write lock was free when last asked: not spin
                    await asyncio.sleep(POLL_SECONDS)
                free = await self._watch.released(left)
            # Waited long enough, or refused for another reason than the lock: SQLAlchemy's
            # way, on aiosqlite's thread, waits for the lock and raises its own errors (an
            # IntegrityError the caller handles, an OperationalError the API answers 503).
            async with engine_of(self.sessions).begin() as conn:
                await conn.execute(_INSERT_RUN, rows)
            return
        statement = _INSERT_RUN
        if engine.dialect.driver == "asyncpg":
            tried = await self._write_on_asyncpg(engine, rows)
            if tried is _Try.WRITTEN:
                return
            if tried is _Try.LOST:  # they may have gone in before the connection failed
                statement = _INSERT_RUN_AGAIN
        try:
            async with engine.connect() as conn:
                await conn.execute(statement, rows)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # A pooled connection the server dropped (a restart): SQLAlchemy has thrown the
            # pool's old connections away. Send it again on a new one; should the first try
            # have committed before its reply was lost, its rows are ours and stay.
            async with engine.connect() as conn:
                await conn.execute(_INSERT_RUN_AGAIN, rows)

    async def _write_if_lock_free(self, nowait: AsyncEngine, rows: list[dict[str, Any]]) -> _Try:
        """SQLite: take the write lock without waiting and insert on the loop, on sqlite3
        itself (no thread hop, no SQLAlchemy execution: 195 against 540 µs CPU a
        submission's ``insert_run``, measured); LOCKED when another process holds the
        lock, REFUSED for anything SQLAlchemy's way should do and report instead. Nothing
        here suspends once the connection is at hand, so the transaction cannot be cut
        off half-way by a cancel."""
        if self._closed or any(row.keys() != _SUBMITTED_KEYS for row in rows):
            return _Try.REFUSED
        if self._kept is None:
            conn = await nowait.connect()
            driver = (await conn.get_raw_connection()).driver_connection
            if not isinstance(driver, InlineConnection):  # a URL the inline driver skips
                await conn.close()
                self._closed = True
                return _Try.REFUSED
            self._kept = conn, driver.raw
        conn, raw = self._kept
        try:
            raw.execute("BEGIN IMMEDIATE")
            _INSERT_PREPARED.run_many(raw, conn.dialect, rows)
            raw.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                raw.rollback()
            if raw.in_transaction or not isinstance(exc, sqlite3.IntegrityError):
                await self._forget()  # the next write starts on a new connection
            if not isinstance(exc, sqlite3.Error):
                raise
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY:
                return _Try.LOCKED  # by someone else, at BEGIN or (rarely) at COMMIT
            return _Try.REFUSED
        return _Try.WRITTEN

    async def _write_on_asyncpg(self, engine: AsyncEngine, rows: list[dict[str, Any]]) -> _Try:
        """PostgreSQL: the rows in one ``executemany`` on asyncpg itself, which is atomic
        (one implicit transaction), without SQLAlchemy's checkout and execution around it:
        160-270 against 640-690 µs of CPU an insert (1,000 in a loop, five rounds, a
        /tmp script on the local server). REFUSED when the server refused the rows
        (nothing went in; SQLAlchemy's way then raises its own error, an IntegrityError
        the caller handles), LOST when the connection failed (they may have gone in)."""
        if self._closed or any(row.keys() != _SUBMITTED_KEYS for row in rows):
            return _Try.REFUSED
        if self._kept is None:
            conn = await engine.connect()
            try:
                raw = (await conn.get_raw_connection()).driver_connection
            except BaseException:
                await conn.close()
                raise
            if self._closed:  # closed while connecting
                await conn.close()
                return _Try.REFUSED
            self._kept = conn, raw
        conn, raw = self._kept
        if raw.is_in_transaction():  # not atomic by itself there; cannot happen, be safe
            await self._forget(invalidate=True)
            return _Try.REFUSED
        sql, args = _INSERT_PREPARED.bind_many(conn.dialect, rows)  # nothing sent yet
        try:
            await raw.executemany(sql, args)
        except BaseException as exc:
            if isinstance(exc, asyncpg.PostgresError) and not raw.is_closed():
                # Refused by the server, which rolled the whole batch back. A duplicate key
                # is the rows' fault; anything else may be the connection's (read-only
                # after a failover, say), so the next insert takes a new one.
                if not str(getattr(exc, "sqlstate", "")).startswith("23"):
                    await self._forget(invalidate=True)
                return _Try.REFUSED
            # The connection failed, or a cancel came mid-statement: whatever its state,
            # it is not used again.
            await self._forget(invalidate=True)
            if not isinstance(exc, Exception):
                raise
            log.info("the ledger insert's connection failed; inserting again", exc_info=True)
            return _Try.LOST
        return _Try.WRITTEN

    async def close(self) -> None:
        """The runtime stops: give the kept connection back, and keep none from now on (a
        flush still running goes SQLAlchemy's way)."""
        self._closed = True
        if self._watch is not None:
            self._watch.close()
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            # A write on the kept connection may be in flight (asyncpg's suspends): let it
            # end before that connection goes back. A flush past the wait goes on after it,
            # SQLAlchemy's way.
            await asyncio.wait({flusher}, timeout=CLOSE_WAIT_SECONDS)  # never raises its error
        await self._forget()

    async def _forget(self, invalidate: bool = False) -> None:
        if self._kept is not None:
            conn, self._kept = self._kept[0], None
            with contextlib.suppress(Exception):
                if invalidate:  # not back into the pool
                    await conn.invalidate()
                await conn.close()


# How long a stopping runtime waits for a group commit in flight (a write is milliseconds).
CLOSE_WAIT_SECONDS = 5.0


class _Try(enum.Enum):
    WRITTEN = "written"
    LOCKED = "locked"
    REFUSED = "refused"
    LOST = "lost"


_INSERT_RUN = insert(TaskRun)
# The columns ``insert_run`` gives every row, compiled once for the lock-free path.
_SUBMITTED_COLUMNS = (
    "id", "name", "queue", "state", "priority", "args", "executor", "attempts", "recoveries",
    "cancel_requested", "idempotency_key", "submitted_at", "dispatched_at",
)  # fmt: skip
_SUBMITTED_KEYS = frozenset(_SUBMITTED_COLUMNS)
_INSERT_PREPARED = Prepared(insert(TaskRun).values({c: bindparam(c) for c in _SUBMITTED_COLUMNS}))
_INSERT_RUN_AGAIN = pg_insert(TaskRun).on_conflict_do_nothing(index_elements=[TaskRun.id])


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)


@dataclass(slots=True)
class NewRun:
    """A run just recorded, as its submission answers with it: the fields the status
    document reads, without an ORM object (22 against 0.5 µs to make, measured; a
    submission makes one per request)."""

    id: str
    name: str
    queue: str
    state: str
    executor: str
    submitted_at: datetime
    attempts: int = 0
    progress: dict[str, Any] | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


async def insert_run(
    sessions: Sessions,
    inserter: Inserter,
    *,
    task_id: str,
    name: str,
    queue: str,
    args: dict[str, Any],
    priority: int,
    executor: str,
    idempotency_key: str | None,
    idempotency_ttl: timedelta,
) -> tuple[TaskRun | NewRun, bool]:
    """Record an accepted task. Returns (row, created); an idempotency key seen within the
    TTL returns the first row instead (created False)."""
    now = utcnow()
    if idempotency_key is not None:
        async with sessions() as session:
            existing = await _by_key(session, idempotency_key)
            if existing is not None and existing.submitted_at > now - idempotency_ttl:
                return existing, False
            if existing is not None:  # expired: free the key for the new task
                await session.execute(
                    update(TaskRun).where(TaskRun.id == existing.id).values(idempotency_key=None)
                )
                await session.commit()
    values: dict[str, Any] = {
        "id": task_id,
        "name": name,
        "queue": queue,
        "state": State.PENDING.value,
        "priority": priority,
        "args": args,
        "executor": executor,
        "attempts": 0,
        "recoveries": 0,
        "cancel_requested": False,
        "idempotency_key": idempotency_key,
        "submitted_at": now,
        "dispatched_at": now,
    }
    try:
        await inserter.add(values)
    except IntegrityError:
        # Another request with the same key won the race: answer with its task.
        if idempotency_key is None:
            raise
        async with sessions() as session:
            winner = await _by_key(session, idempotency_key)
        if winner is None:
            raise
        return winner, False
    return NewRun(task_id, name, queue, State.PENDING.value, executor, now), True


async def adopt(
    sessions: Sessions, *, task_id: str, name: str, queue: str, args: dict[str, Any]
) -> None:
    """Record a task that reached a worker without passing the runtime (a RedBeat firing).
    A row that already exists is left alone."""
    now = utcnow()
    values = {
        "id": task_id, "name": name, "queue": queue, "state": State.PENDING.value,
        "priority": 5, "args": args, "executor": Executor.CELERY.value, "attempts": 0,
        "recoveries": 0, "cancel_requested": False, "submitted_at": now, "dispatched_at": now,
    }  # fmt: skip
    try:
        async with engine_of(sessions).begin() as conn:
            await conn.execute(insert(TaskRun), [values])
    except IntegrityError:
        pass


async def _by_key(session: AsyncSession, key: str) -> TaskRun | None:
    result = await session.execute(select(TaskRun).where(TaskRun.idempotency_key == key))
    return result.scalar_one_or_none()


async def _update(sessions: Sessions, *conditions: Any, **values: Any) -> int:
    async with _autocommit(sessions).connect() as conn:
        result = await conn.execute(update(TaskRun).where(*conditions).values(**values))
        return int(result.rowcount)


def engine_of(sessions: Sessions) -> AsyncEngine:
    """The engine a session factory is bound to (for runs that own a connection)."""
    engine: AsyncEngine = sessions.kw["bind"]
    return engine


def _autocommit(sessions: Sessions) -> AsyncEngine:
    """A transition is one UPDATE, atomic by itself; running it without BEGIN/COMMIT and
    without an ORM session halves its cost, and it runs several times per task."""
    return get_autocommit_engine(_url(sessions))


def _url(sessions: Sessions) -> str:
    """The URL the sessions' engine was made from, as the engine getters key it."""
    return engine_of(sessions).url.render_as_string(hide_password=False)


_WHEN = TaskRun.heartbeat_at.type
_CLAIM = (
    update(TaskRun)
    .where(
        TaskRun.id == bindparam("task_id"),
        TaskRun.cancel_requested.is_(False),
        or_(
            TaskRun.state.in_(_literal(WAITING_STATES)),
            and_(
                TaskRun.state.in_(_literal(RUNNING_STATES)),
                TaskRun.heartbeat_at < bindparam("stale_before", type_=_WHEN),
            ),
        ),
    )
    .values(
        state=State.STARTED,
        claim_token=bindparam("token"),
        runner=bindparam("runner"),
        executor=bindparam("executor"),
        attempts=TaskRun.attempts + 1,
        started_at=func.coalesce(TaskRun.started_at, bindparam("now", type_=_WHEN)),
        heartbeat_at=bindparam("now"),
    )
    .returning(TaskRun.attempts, TaskRun.recoveries, TaskRun.submitted_at, TaskRun.started_at)
)
_CLAIM_PREPARED = Prepared(_CLAIM)


class _ClaimRow(NamedTuple):
    attempts: int
    recoveries: int
    submitted_at: datetime
    started_at: datetime | None


def _claim_params(
    *, task_id: str, token: str, runner: str, executor: str, lease: timedelta
) -> dict[str, Any]:
    now = utcnow()
    return {
        "task_id": task_id,
        "token": token,
        "runner": runner,
        "executor": executor,
        "now": now,
        "stale_before": now - lease,
    }


async def claim(
    sessions: Sessions,
    *,
    task_id: str,
    token: str,
    runner: str,
    executor: str,
    lease: timedelta,
) -> int | None:
    """Take the row for one run: a waiting row, or a running one whose holder went silent.
    Returns the attempt number, or None when the row is not ours to run.

    The claim is what makes a duplicate delivery do nothing: only one claimant's UPDATE
    matches, and a live runner's heartbeat keeps its lease from matching at all.
    """
    row = await claim_row(
        sessions, task_id=task_id, token=token, runner=runner, executor=executor, lease=lease
    )
    return None if row is None else int(row.attempts)


async def claim_row(
    sessions: Sessions,
    *,
    task_id: str,
    token: str,
    runner: str,
    executor: str,
    lease: timedelta,
) -> Row[int, int, datetime, datetime | None] | None:
    """``claim``, answering the row's ``attempts``, ``recoveries``, ``submitted_at`` and
    ``started_at`` (the first start's) as the claim left them."""
    params = _claim_params(
        task_id=task_id, token=token, runner=runner, executor=executor, lease=lease
    )
    async with _autocommit(sessions).connect() as conn:
        row = (await conn.execute(_CLAIM, params)).first()
    return row


async def claim_in(
    conn: AsyncConnection,
    *,
    task_id: str,
    token: str,
    runner: str,
    executor: str,
    lease: timedelta,
) -> _ClaimRow | None:
    """``claim`` inside the caller's transaction: the row stays locked (PostgreSQL: the
    row; SQLite: the database) until that transaction ends, so a duplicate delivery waits
    and then finds the run finished, and nobody ever sees it half done. The row's
    ``attempts``, ``recoveries``, ``submitted_at`` and ``started_at``, or None when it is
    not ours to run."""
    params = _claim_params(
        task_id=task_id, token=token, runner=runner, executor=executor, lease=lease
    )
    rows = await _CLAIM_PREPARED.rows(conn, params)
    return _ClaimRow(*rows[0]) if rows else None


def _held(task_id: str, token: str) -> Any:
    return and_(
        TaskRun.id == task_id,
        TaskRun.claim_token == token,
        TaskRun.state.not_in(_literal(FINAL_STATES)),
    )


async def hold_in(session: AsyncSession, *, task_id: str, token: str) -> bool:
    """Inside the caller's transaction: prove the run still holds its claim, and renew it.

    This is the fence on a leased body's data writes. The UPDATE locks the run's row
    (PostgreSQL) or the database (SQLite) until the caller commits, so a successor's claim
    cannot land between this check and that commit; a claim that landed before it makes
    this return False, and the caller rolls its writes back."""
    result = await session.execute(
        update(TaskRun).where(_held(task_id, token)).values(heartbeat_at=utcnow())
    )
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


async def heartbeat(sessions: Sessions, *, task_id: str, token: str) -> bool:
    """Extend the lease; False when the row is no longer ours (finished, revoked, taken)."""
    return await _update(sessions, _held(task_id, token), heartbeat_at=utcnow()) == 1


async def cancel_requested(sessions: Sessions, task_id: str) -> bool:
    async with sessions() as session:
        value = await session.scalar(select(TaskRun.cancel_requested).where(TaskRun.id == task_id))
        return bool(value)


async def set_progress(
    sessions: Sessions, *, task_id: str, token: str, progress: dict[str, Any]
) -> bool:
    return (
        await _update(
            sessions,
            _held(task_id, token),
            state=State.PROGRESS,
            progress=progress,
            heartbeat_at=utcnow(),
        )
        == 1
    )


@dataclass(frozen=True)
class Ending:
    """How a task ends: its final state and what goes with it. ``notify`` asks for the
    notification row, written in the same transaction."""

    state: State
    notify: bool
    result: Any = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class Ended:
    """A transition that ended a task: whether it took, and the notification it wrote."""

    done: bool
    notice: dict[str, Any] | None = None


_FINISH = (
    update(TaskRun)
    .where(
        TaskRun.id == bindparam("task_id"),
        TaskRun.claim_token == bindparam("token"),
        TaskRun.state.not_in(_literal(FINAL_STATES)),
    )
    .values(
        state=bindparam("state"),
        result=bindparam("result"),
        error=bindparam("error"),
        finished_at=bindparam("now"),
        claim_token=None,
    )
    .returning(TaskRun.id, TaskRun.name)
)
_FINISH_PREPARED = Prepared(_FINISH)

# PostgreSQL: the finish and its notification as one statement, one round trip of a short
# task's five (BEGIN, claim, finish, notification, COMMIT). No row: the finish did not
# take; a row whose notice_id is NULL: it took, and the notification existed already.
_FINISHED = _FINISH.cte("finished")
_NOTICE = (
    pg_insert(Notification)
    .from_select(
        ["task_id", "task_name", "state", "level", "message", "error", "created_at"],
        select(
            _FINISHED.c.id,
            _FINISHED.c.name,
            bindparam("state", type_=Notification.state.type),
            bindparam("level", type_=Notification.level.type),
            _FINISHED.c.name + bindparam("tail", type_=Notification.message.type),
            bindparam("error", type_=Notification.error.type),
            bindparam("now", type_=Notification.created_at.type),
        ),
    )
    .on_conflict_do_nothing()
    .returning(Notification.id)
    .cte("notice")
)
_FINISH_AND_NOTIFY = select(
    _FINISHED.c.id, _FINISHED.c.name, _NOTICE.c.id.label("notice_id")
).select_from(_FINISHED.outerjoin(_NOTICE, true()))


class _EndedRow(NamedTuple):
    id: str
    name: str


async def _end_in(conn: AsyncConnection, condition: Any, ending: Ending, **extra: Any) -> Ended:
    now = utcnow()
    statement = (
        update(TaskRun)
        .where(condition, TaskRun.state.not_in(_literal(FINAL_STATES)))
        .values(
            state=ending.state,
            result=ending.result,
            error=ending.error,
            finished_at=now,
            claim_token=None,
            **extra,
        )
        .returning(TaskRun.id, TaskRun.name)
    )
    return await _ended(conn, (await conn.execute(statement)).first(), ending, now)


async def _ended(
    conn: AsyncConnection, row: Row[str, str] | _EndedRow | None, ending: Ending, now: datetime
) -> Ended:
    """The transition took when it returned the row: write its notification beside it."""
    if row is None:
        return Ended(False)
    if not ending.notify:
        return Ended(True)
    values = notifications.values_for(
        task_id=row.id, task_name=row.name, state=ending.state, error=ending.error, at=now
    )
    return Ended(True, await notifications.record_in(conn, values))


async def finish_in(conn: AsyncConnection, *, task_id: str, token: str, ending: Ending) -> Ended:
    """End a run we hold, inside the caller's transaction."""
    now = utcnow()
    params = {
        "task_id": task_id,
        "token": token,
        "state": ending.state,
        "result": ending.result,
        "error": ending.error,
        "now": now,
    }
    if ending.notify and conn.dialect.name == "postgresql":
        return await _finish_and_notify(conn, params, ending)
    rows = await _FINISH_PREPARED.rows(conn, params)
    return await _ended(conn, _EndedRow(*rows[0]) if rows else None, ending, now)


async def _finish_and_notify(
    conn: AsyncConnection, params: dict[str, Any], ending: Ending
) -> Ended:
    row = (
        await conn.execute(
            _FINISH_AND_NOTIFY,
            params
            | {
                "level": notifications.level_of(ending.state),
                "tail": notifications.message_tail(ending.state, ending.error),
            },
        )
    ).first()
    if row is None:
        return Ended(False)
    if row.notice_id is None:
        return Ended(True)
    values = notifications.values_for(
        task_id=row.id, task_name=row.name, state=ending.state, error=ending.error, at=params["now"]
    )
    return Ended(True, notifications.recorded(row.notice_id, values))


async def finish(sessions: Sessions, *, task_id: str, token: str, ending: Ending) -> Ended:
    """End a run we hold: the state change and its notification in one commit."""
    async with engine_of(sessions).begin() as conn:
        return await finish_in(conn, task_id=task_id, token=token, ending=ending)


async def schedule_retry(
    sessions: Sessions, *, task_id: str, token: str, eta: datetime, error: dict[str, Any]
) -> bool:
    """Hand the row back as RETRY; ``dispatched_at`` is when the retry is due."""
    return (
        await _update(
            sessions,
            _held(task_id, token),
            state=State.RETRY,
            error=error,
            dispatched_at=eta,
            claim_token=None,
        )
        == 1
    )


async def fail_unclaimed(
    sessions: Sessions, *, task_id: str, error: dict[str, Any], notify: bool
) -> Ended:
    """End a task that cannot run any more (attempts exhausted, executor full)."""
    ending = Ending(State.FAILURE, notify=notify, error=error)
    async with engine_of(sessions).begin() as conn:
        return await _end_in(conn, TaskRun.id == task_id, ending)


async def request_cancel(sessions: Sessions, task_id: str, *, notify: bool) -> Ended:
    """Mark the row REVOKED at once (contract: DELETE answers with state REVOKED).

    ``cancel_requested`` fences any later claim, so a queued message or a redelivery after
    a restart never runs it; a running body sees it at its next checkpoint.
    """
    error = {"type": "TaskRevoked", "message": "cancelled by request"}
    ending = Ending(State.REVOKED, notify=notify, error=error)
    async with engine_of(sessions).begin() as conn:
        return await _end_in(conn, TaskRun.id == task_id, ending, cancel_requested=True)


async def mark_dispatched(sessions: Sessions, *, task_id: str, executor: str) -> bool:
    """Record that a message (or a local slot) now carries the task."""
    return (
        await _update(
            sessions,
            TaskRun.id == task_id,
            TaskRun.state.not_in(_literal(FINAL_STATES)),
            executor=executor,
            dispatched_at=utcnow(),
        )
        == 1
    )


async def take_orphan(sessions: Sessions, orphan: Orphan) -> bool:
    """Reset an orphan to PENDING for a new dispatch, only if it is still as it was read.

    Two sweepers that read the same row cannot both win; clearing the claim token fences
    off a runner that was merely slow, not dead (its later writes match nothing).
    """
    heartbeat = (
        TaskRun.heartbeat_at.is_(None)
        if orphan.heartbeat_at is None
        else TaskRun.heartbeat_at == orphan.heartbeat_at
    )
    return (
        await _update(
            sessions,
            TaskRun.id == orphan.id,
            TaskRun.state == orphan.state,
            TaskRun.dispatched_at == orphan.dispatched_at,
            TaskRun.cancel_requested.is_(False),
            heartbeat,
            state=State.PENDING,
            claim_token=None,
            heartbeat_at=None,
            dispatched_at=utcnow(),
            recoveries=TaskRun.recoveries + 1,
        )
        == 1
    )


@dataclass(frozen=True)
class Orphan:
    id: str
    name: str
    queue: str
    args: dict[str, Any]
    priority: int
    state: str
    executor: str
    attempts: int
    dispatched_at: datetime
    heartbeat_at: datetime | None


async def find_orphans(
    sessions: Sessions,
    *,
    lease: timedelta,
    pending_after: timedelta | None,
    sent_before: datetime | None = None,
    limit: int = 500,
) -> list[Orphan]:
    """Rows nobody is carrying: a running row whose lease expired, a local row whose holder
    stopped heartbeating, and a celery row still waiting long after its message was sent
    (``pending_after``) or sent before a worker died holding messages (``sent_before``)."""
    now = utcnow()
    silent = or_(TaskRun.heartbeat_at.is_(None), TaskRun.heartbeat_at < now - lease)
    conditions = [
        and_(TaskRun.state.in_(_literal(RUNNING_STATES)), silent),
        and_(
            TaskRun.state.in_(_literal(WAITING_STATES)),
            TaskRun.executor == Executor.LOCAL,
            TaskRun.dispatched_at < now - lease,
            silent,
        ),
    ]
    cutoffs = [] if pending_after is None else [now - pending_after]
    if sent_before is not None:
        cutoffs.append(sent_before)
    if cutoffs:
        conditions.append(
            and_(
                TaskRun.state.in_(_literal(WAITING_STATES)),
                TaskRun.executor == Executor.CELERY,
                TaskRun.dispatched_at < max(cutoffs),
            )
        )
    query = (
        select(TaskRun)
        .where(TaskRun.cancel_requested.is_(False), or_(*conditions))
        .order_by(TaskRun.dispatched_at)
        .limit(limit)
    )
    async with sessions() as session:
        rows = (await session.execute(query)).scalars().all()
    return [
        Orphan(
            r.id,
            r.name,
            r.queue,
            r.args,
            r.priority,
            r.state,
            r.executor,
            r.attempts,
            r.dispatched_at,
            r.heartbeat_at,
        )
        for r in rows
    ]


async def heartbeat_waiting(sessions: Sessions, task_ids: list[str]) -> None:
    """The local executor proves it still holds the tasks queued in its memory."""
    if task_ids:
        await _update(
            sessions,
            TaskRun.id.in_(task_ids),
            TaskRun.state.in_(_literal(WAITING_STATES)),
            heartbeat_at=utcnow(),
        )


# What a listing shows of each run: the status columns without ``result`` (nor ``args``),
# so a list of many runs never carries (or reads) their results; a run's own status has it.
_SUMMARY_COLUMNS = tuple(c for c in _STATUS_COLUMNS if c is not TaskRun.result)


THROUGHPUT_LOOKBACK = timedelta(hours=1)


async def finished_per_minute(sessions: Sessions, *, since: datetime) -> list[tuple[str, str, int]]:
    """(minute ``YYYY-MM-DD HH:MM`` UTC, final state, count) for runs that finished since
    ``since``, whichever executor ran them. The scan goes by the submitted_at index, so a
    run submitted more than THROUGHPUT_LOOKBACK before ``since`` is not counted (the
    finish path keeps no finished_at index: one more write on every finish)."""
    async with sessions() as session:
        if session.get_bind().dialect.name == "postgresql":
            minute: Any = func.to_char(
                func.timezone("UTC", TaskRun.finished_at), "YYYY-MM-DD HH24:MI"
            )
        else:
            minute = func.substr(TaskRun.finished_at, 1, 16)
        query = (
            select(minute.label("minute"), TaskRun.state, func.count())
            .where(
                TaskRun.submitted_at >= since - THROUGHPUT_LOOKBACK,
                TaskRun.finished_at >= since,
                TaskRun.state.in_(_literal(FINAL_STATES)),
            )
            .group_by(minute, TaskRun.state)
        )
        return [(str(m), str(s), int(n)) for m, s, n in (await session.execute(query)).all()]


async def recent(
    sessions: Sessions, *, state: str | None, name: str | None, limit: int
) -> list[Row[Any]]:
    query = select(*_SUMMARY_COLUMNS).order_by(TaskRun.submitted_at.desc()).limit(limit)
    if state:
        query = query.where(TaskRun.state == state)
    if name:
        query = query.where(TaskRun.name == name)
    async with sessions() as session:
        return list((await session.execute(query)).all())
