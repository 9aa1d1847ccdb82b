"""Waiting for SQLite's write lock by the kernel's word (backend/db/sqlite_lock.py): the
wait ends when the writer lets go, not before and not a poll later; it gives up at its
timeout, and an answer that comes after it is not taken for the next wait's; it follows
SQLite to a new ``-shm`` file; it waits for a writer of this process too; without a
helper it falls back to polling; and the API's ledger insert tries again once per
release, not once per millisecond."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from backend.db.engine import make_engine
from backend.db.models import Base
from backend.db.sqlite_lock import WriteLockWatch
from backend.runtime import ledger

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="OFD locks are Linux's")


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "watched.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
    yield path  # conn stays open, so the -shm file does
    conn.close()


@pytest.fixture
async def watch(database: str) -> AsyncIterator[WriteLockWatch]:
    watched = WriteLockWatch(database)
    yield watched
    watched.close()


def _hold_in_another_process(path: str, seconds: float) -> subprocess.Popen[str]:
    """A writer in another process: takes the lock, says so, holds it ``seconds``."""
    script = (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({path!r}, isolation_level=None)\n"
        "c.execute('CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY)')\n"
        "c.execute('BEGIN IMMEDIATE'); c.execute('INSERT INTO items DEFAULT VALUES')\n"
        "print('held', flush=True)\n"
        f"time.sleep({seconds}); c.execute('COMMIT')\n"
        "print('released', flush=True)\n"
        "time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def _stop(holder: subprocess.Popen[str]) -> None:
    holder.kill()
    holder.wait()
    if holder.stdout is not None:
        holder.stdout.close()


def _try_to_write(path: str) -> str:
    """What another process's writer, not waiting at all, gets."""
    script = (
        "import sqlite3\n"
        f"c = sqlite3.connect({path!r}, timeout=0, isolation_level=None)\n"
        "try:\n    c.execute('BEGIN IMMEDIATE')\nexcept sqlite3.OperationalError as e:\n"
        "    print(e)\nelse:\n    print('written'); c.execute('ROLLBACK')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    return done.stdout.strip()


async def _timed(watch: WriteLockWatch, timeout: float) -> tuple[bool, float]:
    started = time.monotonic()
    free = await watch.released(timeout)
    return free, time.monotonic() - started


async def test_the_wait_ends_when_the_other_process_lets_go(
    database: str, watch: WriteLockWatch
) -> None:
    holder = _hold_in_another_process(database, seconds=0.6)
    try:
        free, waited = await _timed(watch, timeout=10)
        assert holder.stdout is not None and holder.stdout.readline() == "released\n"
    finally:
        _stop(holder)
    assert not free  # it was held when asked
    assert 0.3 <= waited < 5  # it waited for the commit, and did not run to its timeout
    assert _try_to_write(database) == "written"  # and holds nothing after


async def test_a_free_lock_is_reported_at_once_and_a_held_one_at_the_timeout(
    database: str, watch: WriteLockWatch
) -> None:
    free, waited = await _timed(watch, timeout=10)
    assert free and waited < 5

    holder = _hold_in_another_process(database, seconds=30)
    try:
        free, waited = await _timed(watch, timeout=0.3)
        assert not free and 0.25 <= waited < 5
    finally:
        _stop(holder)
    # The holder died with its transaction: the helper's wait ends, and the next is free.
    free, waited = await _timed(watch, timeout=10)
    assert waited < 5
    free, waited = await _timed(watch, timeout=10)
    assert free and waited < 5


async def test_an_answer_after_a_timeout_is_not_the_next_waits(
    database: str, watch: WriteLockWatch
) -> None:
    first = _hold_in_another_process(database, seconds=30)
    try:
        free, _ = await _timed(watch, timeout=0.2)  # times out; the helper still waits
        assert not free
    finally:
        _stop(first)  # the helper's wait ends now, with nobody waiting on it
    second = _hold_in_another_process(database, seconds=30)
    try:
        await asyncio.sleep(0.2)  # the helper's late answer has arrived
        free, waited = await _timed(watch, timeout=0.3)
        assert not free and waited >= 0.25  # a new wait, on the second holder
        # Callers that come while a wait is in flight share it.
        both = await asyncio.gather(watch.released(timeout=0.2), watch.released(timeout=0.2))
        assert both == [False, False]
    finally:
        _stop(second)


async def test_it_waits_for_a_writer_of_this_process_too(
    database: str, watch: WriteLockWatch
) -> None:
    own = sqlite3.connect(database, isolation_level=None)
    try:
        own.execute("BEGIN IMMEDIATE")
        free, _ = await _timed(watch, timeout=0.3)
        assert not free  # blocked by our own connection's lock
        assert _try_to_write(database) == "database is locked"  # which is still held
        own.execute("COMMIT")
        free, waited = await _timed(watch, timeout=10)  # that wait ends with the commit
        assert waited < 5
    finally:
        own.close()
    assert _try_to_write(database) == "written"


async def test_it_follows_sqlite_to_a_new_shm_file(tmp_path: Path) -> None:
    path = str(tmp_path / "renewed.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
    watch = WriteLockWatch(path)
    try:
        assert await watch.released(timeout=10)  # the helper has the first -shm open
        conn.close()  # the last connection: SQLite deletes the -shm file
        assert not await asyncio.to_thread(os.path.exists, f"{path}-shm")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("SELECT count(*) FROM items").fetchall()  # a new -shm
        holder = _hold_in_another_process(path, seconds=30)
        try:
            free, waited = await _timed(watch, timeout=0.3)
            assert not free and waited >= 0.25  # it waits on the new file's lock
        finally:
            _stop(holder)
    finally:
        watch.close()
        conn.close()


async def test_without_a_helper_it_polls(database: str, tmp_path: Path) -> None:
    # No -shm file (never opened, or not WAL): a 1-ms sleep, reported as a wait.
    never = WriteLockWatch(str(tmp_path / "never-opened.db"))
    free, waited = await _timed(never, timeout=10)
    assert not free and waited < 1

    # A helper that died: the watch gives up on helpers and polls from then on.
    watch = WriteLockWatch(database)
    try:
        assert await watch.released(timeout=10)
        assert watch._helper is not None
        watch._helper.kill()
        watch._helper.wait()
        holder = _hold_in_another_process(database, seconds=30)
        try:
            _, waited = await _timed(watch, timeout=10)  # finds it gone
            assert waited < 1
            free, waited = await _timed(watch, timeout=10)  # and polls from then on
            assert not free and waited < 1
        finally:
            _stop(holder)
        assert watch._helper is None
    finally:
        watch.close()


async def test_closing_ends_a_wait_in_flight(database: str) -> None:
    watch = WriteLockWatch(database)
    holder = _hold_in_another_process(database, seconds=30)
    try:
        waiting = asyncio.ensure_future(watch.released(timeout=10))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        watch.close()
        assert await asyncio.wait_for(waiting, 5) is True
    finally:
        _stop(holder)


async def test_the_ledger_insert_tries_again_when_the_lock_is_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submission while another process holds the lock for 0.3 s: one try before the
    release and one after it, on the lock-free path (1-ms polls would make dozens, and
    then give up to SQLAlchemy's way)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    engine = make_engine(url, inline=True)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    inserter = ledger.Inserter(async_sessionmaker(engine, expire_on_commit=False))
    tries: list[str] = []
    try_once = inserter._write_if_lock_free

    async def counted(*args: Any) -> Any:
        tried = await try_once(*args)
        tries.append(tried.value)
        return tried

    monkeypatch.setattr(inserter, "_write_if_lock_free", counted)
    try:
        await inserter.add(_submitted("before"))  # starts the watch's helper
        await asyncio.sleep(0.5)  # and lets it start
        tries.clear()
        holder = _hold_in_another_process(str(tmp_path / "ledger.db"), seconds=0.3)
        try:
            await inserter.add(_submitted("held"))
        finally:
            _stop(holder)
        assert tries == ["locked", "written"]
    finally:
        await inserter.close()
        await engine.dispose()


def _submitted(task_id: str) -> dict[str, Any]:
    now = ledger.utcnow()
    return {
        "id": task_id, "name": "system.noop", "queue": "default", "state": "PENDING",
        "priority": 5, "args": {}, "executor": "celery", "attempts": 0, "recoveries": 0,
        "cancel_requested": False, "idempotency_key": None, "submitted_at": now,
        "dispatched_at": now,
    }  # fmt: skip
