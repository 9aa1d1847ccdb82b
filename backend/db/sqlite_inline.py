"""SQLite called on the event loop's own thread, where nothing else is waiting on that loop.

aiosqlite runs every call on a helper thread and wakes the loop for its answer: about
90 µs a hop, two hops a statement (execute, fetch), measured here, against 1 to 20 µs for
the SQLite call itself. A short task is five statements in one transaction, so the hops
cost more than the work, and they are spent while the task holds SQLite's one write
lock, which the API and the other worker processes are waiting for.

Three places call SQLite this way (db/engine.py): an atomic run in a Celery worker
process, whose loop runs that one task and whose one transaction is the only writer in
the process while it lasts, so a wait for the lock blocks nothing else; single reads on
the request path (the status poll), which under WAL never wait for the lock; and the
API's ledger insert, which never waits either (busy timeout 0: when the lock is taken it
goes and waits on aiosqlite's thread, runtime/ledger.py). Everything else keeps
aiosqlite: a leased run's heartbeat writes beside the body's open transaction (on one
thread that would deadlock until the busy timeout), and the API must not stop serving
while one of its writes waits. ``connector`` gives SQLAlchemy's aiosqlite dialect
(through ``create_async_engine(async_creator=...)``) an object with aiosqlite's interface
whose coroutines finish at once, so a statement costs a greenlet switch, not two hops.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any


class InlineCursor:
    """aiosqlite's ``Cursor`` interface over a sqlite3 cursor, without a thread."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *_: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> InlineCursor:
        self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> InlineCursor:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class _RunNow:
    """Stands in for aiosqlite's request queue, which SQLAlchemy's dialect feeds directly
    to change the isolation level: the function runs at once and settles the future."""

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:
            future.set_exception(exc)


class InlineConnection:
    """aiosqlite's ``Connection`` interface over a sqlite3 connection, without a thread."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection: sqlite3.Connection | None = connection
        self._tx = _RunNow()

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._connection is None:
            raise ValueError("no active connection")
        return self._connection

    @property
    def raw(self) -> sqlite3.Connection:
        """The sqlite3 connection itself, for a caller that runs a whole transaction on
        it (the ledger's Inserter)."""
        return self._conn

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor())

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> InlineCursor:
        return await self.cursor().execute(sql, parameters)

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def stop(self) -> None:
        """What SQLAlchemy calls to terminate a connection it gave up on."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction


def connector(database: str, timeout: float) -> Callable[[], Any]:
    """The ``async_creator`` for an engine on ``database`` (a file path)."""

    async def connect() -> InlineConnection:
        # check_same_thread off: the pool may close a connection from a finalizer thread.
        return InlineConnection(sqlite3.connect(database, timeout=timeout, check_same_thread=False))

    return connect
