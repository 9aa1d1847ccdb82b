"""One async engine and session factory per process, made after fork and never inherited.

A Celery prefork child, the API process and a test each call ``get_session_factory()`` in
their own process and event loop; the cache is keyed by pid so a forked child never reuses
its parent's pooled connections (which belong to another process and another loop).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from backend.config import Settings, get_settings
from backend.db import checkpointer, sqlite_inline

SQLITE_BUSY_TIMEOUT_MS = 15_000

_engines: dict[tuple[int, str], AsyncEngine] = {}
_factories: dict[tuple[int, str], async_sessionmaker[Any]] = {}


# PostgreSQL notices a client that vanished (a worker partitioned mid-transaction) only
# when TCP does: by keepalive after the OS default of two hours, or, when its last reply
# was not yet acknowledged, after ~15 minutes of retransmissions. Meanwhile the session's
# open transaction keeps its row locks, and the recovery sweep re-dispatching that task
# waits on them (CI saw a takeover stuck for a minute "updating tuple in task_runs").
# Keepalive probes after 10 s of silence, every 2 s, three times; unacknowledged data for
# 16 s: such a session ends ~16 s after its last packet, inside the default 30 s lease. A
# live client's kernel acknowledges and answers probes however busy its process is.
DEAD_PEER = {
    "tcp_user_timeout": "16000",
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
}


def make_engine(
    url: str,
    *,
    autocommit: bool = False,
    inline: bool = False,
    busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
    pre_ping: bool = True,
) -> AsyncEngine:
    """Build an engine tuned for its backend; SQLite is shared by several processes.

    ``inline``: SQLite is called on the loop's thread, not aiosqlite's (db/sqlite_inline.py
    says when that is safe). ``busy_timeout_ms``: how long a SQLite writer waits for the
    lock before "database is locked". ``pre_ping``: PostgreSQL, test each pooled
    connection with a round trip before use (off only where the caller retries a statement
    that found its connection dropped)."""
    options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        # (The inline connector opens a plain file path: a URL with options keeps aiosqlite.)
        if inline and parsed.database not in (None, "", ":memory:") and not parsed.query:
            options["async_creator"] = sqlite_inline.connector(
                str(parsed.database), busy_timeout_ms / 1000
            )
        engine = create_async_engine(
            url,
            connect_args={"timeout": busy_timeout_ms / 1000},
            # A pool of file connections per process is cheap and avoids reopening the file.
            pool_size=5,
            max_overflow=10,
            **options,
        )
        _tune_sqlite(engine, busy_timeout_ms)
        return engine
    return create_async_engine(
        url,
        pool_size=10,
        max_overflow=20,
        pool_pre_ping=pre_ping,
        # asyncpg prepares every statement; after five runs PostgreSQL may switch to a
        # generic plan made while a table was still empty (a seq scan), and a sync's key
        # lookups then slow down as the table grows (3 s a batch at 80k rows, measured).
        connect_args={"server_settings": {"plan_cache_mode": "force_custom_plan", **DEAD_PEER}},
        **options,
    )


def make_unpooled_engine(url: str) -> AsyncEngine:
    """An engine for short-lived tools (migrations, tests) that must not keep connections."""
    engine = create_async_engine(url, poolclass=NullPool)
    if make_url(url).get_backend_name() == "sqlite":
        _tune_sqlite(engine)
    return engine


def _tune_sqlite(engine: AsyncEngine, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> None:
    database = engine.url.database
    if database and database != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets readers run beside one writer across processes; the busy timeout makes a
        # writer wait for the lock instead of failing at once.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def get_engine(settings: Settings | None = None) -> AsyncEngine:
    return get_engine_for((settings or get_settings()).database_url)


def get_engine_for(url: str) -> AsyncEngine:
    return _cached("", url, lambda: make_engine(url))


def get_autocommit_engine(url: str) -> AsyncEngine:
    """This process's engine in autocommit mode, for single statements that are atomic by
    themselves (the ledger's transitions): no BEGIN/COMMIT round trips, its own pool so no
    connection switches isolation level on every checkout."""
    return _cached("autocommit", url, lambda: make_engine(url, autocommit=True))


def get_atomic_engine(url: str) -> AsyncEngine:
    """The engine an atomic run takes its one connection from in a Celery worker process.

    A worker process runs one task at a time, and an atomic run's one transaction is the
    only writer in it while it lasts, so on SQLite it calls SQLite on the loop
    (db/sqlite_inline.py): its write lock is held for the statements, not for thread hops.
    A leased run does not: its heartbeat writes beside the body's open transaction, and
    on one thread that wait would be a deadlock until the busy timeout.

    On PostgreSQL it skips the pre-ping, one of a no-op's six round trips (ping, BEGIN,
    claim, finish, notification, COMMIT): a connection
    the server dropped fails the run's first statement, which rolls back what was never
    done, and ``execute`` runs it again the leased way, on a new connection. (The API's
    local executor shares its loop with requests and uses ``get_engine`` instead.)"""
    if not _is_sqlite(url):
        return _cached("atomic", url, lambda: make_engine(url, pre_ping=False))
    # Its commits leave the WAL's checkpoints to the worker's checkpointer thread
    # (db/checkpointer.py), unless that falls far behind.
    return _cached("atomic", url, lambda: _checkpoint_past(
        make_engine(url, inline=True), checkpointer.FALLBACK_PAGES
    ))  # fmt: skip


def get_insert_engine(url: str) -> AsyncEngine:
    """The engine of the ledger's Inserter (one multi-row INSERT at a time, atomic by
    itself, so autocommit).

    SQLite: inline, and a writer that does not wait for the lock at all, so it can try to
    take the lock on the API's loop and, when another process holds it, go and wait for
    it on aiosqlite's thread instead: the loop never blocks on the lock, and a free lock
    costs no hop. PostgreSQL: no pre-ping; the ping, BEGIN and COMMIT were three of the
    insert's four round trips (1.8 against 0.9 ms an insert, measured), and the Inserter
    sends a statement that met a dropped connection again, once."""
    if not _is_sqlite(url):
        return _cached("insert", url, lambda: make_engine(url, autocommit=True, pre_ping=False))
    # A commit past the WAL's checkpoint size would checkpoint (and fsync) right on the
    # API's loop; the checkpointer threads (db/checkpointer.py) and other commits do it.
    return _cached("insert", url, lambda: _checkpoint_past(
        make_engine(url, autocommit=True, inline=True, busy_timeout_ms=0), 0
    ))  # fmt: skip


def get_read_engine(url: str) -> AsyncEngine:
    """This process's engine for single reads on the request path (the status poll).

    Under WAL a read never waits for SQLite's write lock, so on SQLite even the API calls
    it on the loop (db/sqlite_inline.py) and skips two thread hops a poll. Elsewhere it is
    the autocommit engine."""
    if not _is_sqlite(url):
        return get_autocommit_engine(url)
    return _cached("read", url, lambda: make_engine(url, autocommit=True, inline=True))


def _cached(kind: str, url: str, build: Callable[[], AsyncEngine]) -> AsyncEngine:
    """This process's engine of ``kind`` for ``url``, made on first use (after any fork)."""
    key = (os.getpid(), f"{kind}:{url}" if kind else url)
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = build()
    return engine


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _checkpoint_past(engine: AsyncEngine, pages: int) -> AsyncEngine:
    """Its commits checkpoint the WAL only past ``pages`` (0: never)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _checkpoint_setting(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")
        cursor.close()

    return engine


def get_session_factory(settings: Settings | None = None) -> async_sessionmaker[Any]:
    url = (settings or get_settings()).database_url
    key = (os.getpid(), url)
    factory = _factories.get(key)
    if factory is None:
        factory = _factories[key] = async_sessionmaker(get_engine(settings), expire_on_commit=False)
    return factory


async def dispose_engines() -> None:
    """Close this process's engines (at shutdown; a fork's inherited ones are just dropped)."""
    pid = os.getpid()
    for key in [k for k in _engines if k[0] == pid]:
        await _engines.pop(key).dispose()
        _factories.pop(key, None)
