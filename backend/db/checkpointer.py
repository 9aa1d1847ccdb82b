"""SQLite's WAL checkpoints on a thread of their own, off the tasks' and requests' path.

A checkpoint copies the WAL's pages into the database file and fsyncs both: 12 to 14 ms
for 1,000 frames here, of which about 1.2 ms is CPU (measured); the rest is waiting for
the disk. SQLite runs it by default inside the commit that takes the WAL past 1,000
pages, so in a worker one short task in about a hundred waited those milliseconds. The
worker's main process, which mostly waits on its queues, runs this thread instead; the
atomic runs' connections checkpoint only past ``FALLBACK_PAGES`` (db/engine.py), should
this thread fall behind or not run. The API process runs one too: its ledger inserts
never checkpoint (that would fsync on its loop), so with no worker running its WAL only
grew, and every insert and read got slower as it did. A PASSIVE checkpoint takes no lock
a writer needs: tasks commit beside it, and of two checkpointers one skips its turn.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 0.25
# Where a worker's atomic runs checkpoint themselves after all (SQLite's default: 1,000).
FALLBACK_PAGES = 10_000


# A fork (a prefork worker replacing a child) must not copy SQLite mid-checkpoint: the
# child would inherit its mutexes held, and its first SQLite call would hang. The fork
# waits for the checkpoint in flight (milliseconds); none starts until it is done.
_NOT_WHILE_FORKING = threading.Lock()
os.register_at_fork(
    before=_NOT_WHILE_FORKING.acquire,
    after_in_parent=_NOT_WHILE_FORKING.release,
    after_in_child=_NOT_WHILE_FORKING.release,
)


class Checkpointer:
    """A daemon thread checkpointing one SQLite database every ``interval`` seconds."""

    def __init__(self, path: str, interval: float = INTERVAL_SECONDS) -> None:
        self.path = path
        self.interval = interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="syncq-checkpoint", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _loop(self) -> None:
        # Its own connection, made and used only on this thread (a forked child gets a copy
        # of it in memory, never used there).
        try:
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        except sqlite3.Error:
            log.warning("cannot checkpoint %s", self.path, exc_info=True)
            return
        log.info("checkpointing %s every %.2f s", self.path, self.interval)
        try:
            while not self.stopped.wait(self.interval):
                try:
                    with _NOT_WHILE_FORKING:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # another checkpointer's turn, a moved file
                    log.debug("checkpoint of %s skipped: %s", self.path, exc)
        finally:
            conn.close()


def for_database(url: str) -> Checkpointer | None:
    """A checkpointer for the SQLite file ``url`` names; None for any other database."""
    database = make_url(url)
    if database.get_backend_name() != "sqlite" or database.database in (None, "", ":memory:"):
        return None
    return Checkpointer(str(database.database))
