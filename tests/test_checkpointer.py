"""SQLite's WAL checkpoints run on a thread of a worker's main process and of the API,
off the tasks' and requests' path (backend/db/checkpointer.py); a worker's atomic runs
checkpoint only far past it, the API's inserts never."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from sqlalchemy.engine import make_url

from backend.db.checkpointer import Checkpointer
from tests.conftest import StartWorker
from tests.support import Api, wait_for


def _writer(path: Path) -> sqlite3.Connection:
    """A connection that never checkpoints, as a worker's atomic runs nearly never do."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, body TEXT)")
    return conn


def _write(conn: sqlite3.Connection, rows: int) -> None:
    for n in range(rows):
        conn.execute("INSERT INTO rows (body) VALUES (?)", (f"{n:06d}" * 100,))


def test_the_checkpointer_copies_the_wal_into_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    writer = _writer(path)
    _write(writer, 2_000)  # ~1.2 MB of rows, one commit each, all of it still in the WAL
    time.sleep(0.3)  # nothing else copies them meanwhile
    assert Path(f"{path}-wal").stat().st_size > 1_000_000 > path.stat().st_size

    checkpoints = Checkpointer(str(path), interval=0.05)
    checkpoints.start()
    try:
        wait_for(lambda: path.stat().st_size > 1_000_000, 10, what="pages checkpointed")
        # Writers go on beside it, and what they add gets copied too.
        _write(writer, 2_000)
        wait_for(lambda: path.stat().st_size > 2_000_000, 10, what="later pages checkpointed")
    finally:
        checkpoints.stop()
        checkpoints.thread.join(5)
        writer.close()
    assert not checkpoints.thread.is_alive()


def test_a_worker_and_the_api_on_sqlite_run_the_checkpointer(
    start_worker: StartWorker, api: Api, stack_env: dict[str, str]
) -> None:
    """The API's ledger inserts never checkpoint: without its own thread, submissions
    with no worker running would grow the WAL without end."""
    worker = start_worker()
    database = make_url(stack_env["DATABASE_URL"])
    line = f"checkpointing {database.database} every"
    if database.get_backend_name() != "sqlite":
        # (The API's log is shared with the SQLite session's API, which logged it.)
        assert "checkpointing" not in worker.log_path.read_text()
        return
    for process in (worker, api):
        logged = process.log_path.read_text
        wait_for(lambda r=logged: line in r(), 10, what=f"'{line}' in {process.log_path}")
