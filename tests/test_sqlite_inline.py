"""SQLite on the loop's thread (backend/db/sqlite_inline.py), as atomic runs in a worker and
status reads use it: the same SQLAlchemy behaviour as through aiosqlite, on a real file
shared with a second engine, including the waits and errors of SQLite's one write lock.

The worker tests (test_conversations, test_faults, ...) run it end to end: every atomic
task a worker they start on SQLite runs, and every status poll, goes this way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.db.engine import make_engine
from backend.db.sqlite_inline import InlineConnection


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[str]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}"
    engine = make_engine(url, inline=False)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT UNIQUE)"))
    await engine.dispose()
    yield url


@pytest.fixture
async def inline(database: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database, inline=True)
    yield engine
    await engine.dispose()


async def _names(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(text("SELECT name FROM items ORDER BY id"))).scalars())


async def test_it_really_is_the_inline_connection(inline: AsyncEngine) -> None:
    async with inline.connect() as conn:
        raw = await conn.get_raw_connection()
        assert isinstance(raw.driver_connection, InlineConnection)
        mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar_one()
    assert mode == "wal"


async def test_a_committed_transaction_is_seen_by_the_thread_engine_and_a_rollback_is_not(
    inline: AsyncEngine, database: str
) -> None:
    other = make_engine(database, inline=False)
    async with inline.begin() as conn:
        await conn.execute(text("INSERT INTO items (name) VALUES ('kept')"))
    async with inline.connect() as conn, conn.begin() as tx:
        await conn.execute(text("INSERT INTO items (name) VALUES ('dropped')"))
        await tx.rollback()
    try:
        assert await _names(other) == ["kept"]
    finally:
        await other.dispose()


async def test_returning_and_executemany_work(inline: AsyncEngine) -> None:
    async with inline.begin() as conn:
        await conn.execute(text("INSERT INTO items (name) VALUES (:n)"), [{"n": "a"}, {"n": "b"}])
        returned = await conn.execute(text("INSERT INTO items (name) VALUES ('c') RETURNING id"))
        assert returned.scalar_one() == 3
    assert await _names(inline) == ["a", "b", "c"]


async def test_constraint_and_lock_errors_arrive_as_sqlalchemy_errors(
    inline: AsyncEngine, database: str
) -> None:
    async with inline.begin() as conn:
        await conn.execute(text("INSERT INTO items (name) VALUES ('once')"))
    with pytest.raises(IntegrityError):
        async with inline.begin() as conn:
            await conn.execute(text("INSERT INTO items (name) VALUES ('once')"))

    import sqlite3

    holder = sqlite3.connect(database.removeprefix("sqlite+aiosqlite:///"))
    holder.execute("BEGIN IMMEDIATE")
    impatient = make_engine(database, inline=True)
    try:
        async with impatient.connect() as conn:
            await conn.exec_driver_sql("PRAGMA busy_timeout=200")
            with pytest.raises(OperationalError, match="locked"):
                await conn.execute(text("INSERT INTO items (name) VALUES ('blocked')"))
    finally:
        holder.rollback()
        holder.close()
        await impatient.dispose()


async def test_a_writer_waits_for_the_lock_and_then_commits(
    inline: AsyncEngine, database: str
) -> None:
    """The busy timeout applies as through aiosqlite: the write waits, it does not fail."""
    import sqlite3

    path = database.removeprefix("sqlite+aiosqlite:///")
    holder = sqlite3.connect(path, timeout=5, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")

    def release() -> None:
        time.sleep(0.3)
        holder.rollback()

    releaser = asyncio.ensure_future(asyncio.to_thread(release))
    await asyncio.sleep(0.05)  # the releaser's thread is sleeping now; the loop will block
    started = time.monotonic()
    async with inline.begin() as conn:
        await conn.execute(text("INSERT INTO items (name) VALUES ('after the wait')"))
    waited = time.monotonic() - started
    await releaser
    holder.close()
    assert waited >= 0.2
    assert await _names(inline) == ["after the wait"]


async def test_the_autocommit_engine_commits_each_statement(database: str) -> None:
    autocommit = make_engine(database, autocommit=True, inline=True)
    try:
        async with autocommit.connect() as conn:
            await conn.execute(text("INSERT INTO items (name) VALUES ('alone')"))
            raw = await conn.get_raw_connection()
            assert raw.driver_connection.isolation_level is None
        assert await _names(autocommit) == ["alone"]
    finally:
        await autocommit.dispose()
