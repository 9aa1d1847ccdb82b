"""Waiting for SQLite's write lock by the kernel's word (backend/db/sqlite_lock.py): the
wait ends when the writer lets go, not before and not a poll later; it gives up at its
timeout; and it never loosens the locks SQLite's own connections in this process hold."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.db.sqlite_lock import WriteLockWatch

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="OFD locks are Linux's")


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "watched.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
    yield path  # conn stays open, so the -shm file does
    conn.close()


def _hold_in_another_process(path: str, seconds: float) -> subprocess.Popen[str]:
    """A writer in another process: takes the lock, says so, holds it ``seconds``."""
    script = (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({path!r}, isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE'); c.execute('INSERT INTO items DEFAULT VALUES')\n"
        "print('held', flush=True)\n"
        f"time.sleep({seconds}); c.execute('COMMIT')\n"
        "print('released', flush=True)\n"
        "time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


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


async def test_the_wait_ends_when_the_other_process_lets_go(database: str) -> None:
    watch = WriteLockWatch(database)
    holder = _hold_in_another_process(database, seconds=0.6)
    try:
        started = time.monotonic()
        await watch.released(timeout=10)
        waited = time.monotonic() - started
        assert holder.stdout is not None and holder.stdout.readline() == "released\n"
    finally:
        holder.kill()
        holder.wait()
    assert 0.3 <= waited < 5  # it waited for the commit, and did not run to its timeout
    assert _try_to_write(database) == "written"


async def test_a_free_lock_is_reported_at_once_and_a_held_one_at_the_timeout(
    database: str,
) -> None:
    watch = WriteLockWatch(database)
    started = time.monotonic()
    await watch.released(timeout=10)
    assert time.monotonic() - started < 2

    holder = _hold_in_another_process(database, seconds=30)
    try:
        started = time.monotonic()
        await watch.released(timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 5
        # Two callers while the wait is still in flight share it.
        both = asyncio.gather(watch.released(timeout=0.2), watch.released(timeout=0.2))
        await both
    finally:
        holder.kill()
        holder.wait()
    # The holder died with its transaction: the thread's wait ends, a new one is free.
    started = time.monotonic()
    await watch.released(timeout=10)
    assert time.monotonic() - started < 5


async def test_waiting_never_loosens_this_processs_own_sqlite_locks(database: str) -> None:
    """An OFD lock is the descriptor's, not the process's: taking and dropping it beside a
    connection of this process that holds the write lock leaves that lock held."""
    watch = WriteLockWatch(database)
    own = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    try:
        own.execute("BEGIN IMMEDIATE")
        await watch.released(timeout=0.2)  # blocked by our own connection's lock
        assert _try_to_write(database) == "database is locked"
        own.execute("COMMIT")
        await watch.released(timeout=10)  # the thread's wait ended with the commit
        own.execute("BEGIN IMMEDIATE")
        await watch.released(timeout=0.1)
        assert _try_to_write(database) == "database is locked"
        own.execute("ROLLBACK")
    finally:
        own.close()
    assert _try_to_write(database) == "written"


async def test_without_a_shm_file_it_falls_back_to_a_short_sleep(tmp_path: Path) -> None:
    watch = WriteLockWatch(str(tmp_path / "never-opened.db"))
    started = time.monotonic()
    await watch.released(timeout=10)
    assert time.monotonic() - started < 1
