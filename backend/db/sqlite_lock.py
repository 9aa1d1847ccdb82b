"""Wait for another process to let go of SQLite's write lock, woken the moment it does.

The API's ledger insert never waits inside SQLite (busy timeout 0, runtime/ledger.py):
SQLite's own busy wait sleeps 1, 2, 5, 10 ms ... between tries, and a timer on the event
loop cannot sleep less than a millisecond either (epoll's timeout is in milliseconds),
while a worker holds the lock for a few hundred microseconds a task. So the insert waits
here instead, for the kernel to say the lock is free.

In WAL mode every writer holds an exclusive fcntl lock on byte 120 of the database's
``-shm`` file for as long as its write transaction lasts (WAL_WRITE_LOCK, the first of
the wal-index's lock bytes; https://sqlite.org/walformat.html documents them for the
unix VFS). A thread asks for a shared lock on that byte with an open-file-description
lock (``F_OFD_SETLKW``), which blocks until the writer lets go, and gives it back at
once. Being an OFD lock it belongs to this module's own descriptor, not to the process:
taking and giving it back never touches the locks SQLite's connections in this process
hold, as a POSIX lock on the same file would. The descriptor is never closed while the
file is in use, since closing any descriptor of a file drops every POSIX lock the
process holds on it (SQLite's included).

Linux only (OFD locks); elsewhere, or without a ``-shm`` file, ``released`` sleeps one
millisecond, the old poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import struct
import threading

WAL_WRITE_LOCK_BYTE = 120
POLL_SECONDS = 0.001

# -1 where the platform has no OFD locks.
_OFD_WAIT: int = getattr(fcntl, "F_OFD_SETLKW", -1)
_OFD_SET: int = getattr(fcntl, "F_OFD_SETLK", -1)

_Request = tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]


def _flock(kind: int) -> bytes:
    """``struct flock`` for the write-lock byte (l_pid must be 0 for an OFD lock)."""
    return struct.pack("hhqqi", kind, os.SEEK_SET, WAL_WRITE_LOCK_BYTE, 1, 0)


_SHARE = _flock(fcntl.F_RDLCK)
_UNLOCK = _flock(fcntl.F_UNLCK)


class WriteLockWatch:
    """One database file's write lock, waited on by one daemon thread (a daemon: a wait
    on a writer that never lets go must not hold up the interpreter's exit). One wait is
    in flight at a time; callers that come meanwhile share it."""

    def __init__(self, database: str) -> None:
        self.shm_path = f"{database}-shm"
        self._fd: int | None = None
        self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._waiting: asyncio.Future[None] | None = None

    async def released(self, timeout: float) -> None:
        """Return when no other process holds the write lock (perhaps at once), or after
        ``timeout`` seconds, whichever is first. Another writer may take the lock again
        before the caller does: the caller tries, and comes back here if it lost."""
        if self._waiting is None or self._waiting.done():
            fd = self._open()
            if fd is None:
                await asyncio.sleep(POLL_SECONDS)
                return
            loop = asyncio.get_running_loop()
            self._waiting = loop.create_future()
            self._requests.put((fd, loop, self._waiting))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="sqlite-write-lock", daemon=True
                )
                self._thread.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._waiting), timeout)

    def _open(self) -> int | None:
        """The ``-shm`` file's descriptor, opened again when SQLite has deleted the file
        (its last connection closed: nobody holds a lock on the old one then). Runs only
        while no wait is in flight, so the thread never waits on a closed descriptor."""
        if _OFD_WAIT == -1:
            return None
        if self._fd is not None and os.fstat(self._fd).st_nlink == 0:
            os.close(self._fd)
            self._fd = None
        if self._fd is None:
            try:
                self._fd = os.open(self.shm_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
        return self._fd

    def _serve(self) -> None:
        while True:
            fd, loop, waiting = self._requests.get()
            try:
                fcntl.fcntl(fd, _OFD_WAIT, _SHARE)
                fcntl.fcntl(fd, _OFD_SET, _UNLOCK)
            except OSError:
                pass  # the caller tries SQLite again, which reports what is wrong
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(_settle, waiting)


def _settle(waiting: asyncio.Future[None]) -> None:
    if not waiting.done():
        waiting.set_result(None)
