"""Wait for another process to let go of SQLite's write lock, woken the moment it does.

The API's ledger insert never waits inside SQLite (busy timeout 0, runtime/ledger.py):
SQLite's own busy wait sleeps 1, 2, 5, 10 ms ... between tries, and a timer on the event
loop cannot sleep less than a millisecond either (epoll's timeout is in milliseconds),
while a worker holds the lock for a few hundred microseconds a task. So the insert waits
here instead, for the kernel to say the lock is free.

In WAL mode every writer holds an exclusive fcntl lock on byte 120 of the database's
``-shm`` file for as long as its write transaction lasts (WAL_WRITE_LOCK, the first of
the wal-index's lock bytes; https://sqlite.org/walformat.html documents them for the
unix VFS). Asking for a shared lock on that byte (an open-file-description lock,
``F_OFD_SETLKW``) blocks until the writer lets go; given back at once (two system calls
later, during which a writer trying to begin is refused and sleeps in SQLite's busy
handler), it tells us the lock is free.

The asking is done by a small helper process, one per watch, not by a thread of ours:
* between getting the shared lock and giving it back a thread would need the GIL again,
  which the busy event loop may hold for up to the 5-ms switch interval, while every
  writer (a worker starting its next task) is refused the lock;
* the helper holds no SQLite connection, so its descriptor of the ``-shm`` file cannot
  take the POSIX locks of SQLite's connections with it when closed (closing any
  descriptor of a file drops every POSIX lock its process holds on it).
The loop writes a byte to ask and reads the helper's one-byte answer as a reader callback:
``f`` the lock was free when asked, ``r`` it was released. The helper ends when its
standard input closes (the API stops or dies).

Where OFD locks are missing (not Linux, an old kernel, a sandbox that refuses them), the
helper cannot start, or the database has no ``-shm`` file, the helper says ``x`` and
exits (or never starts), and ``released`` sleeps one millisecond, the poll this replaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys

log = logging.getLogger(__name__)

WAL_WRITE_LOCK_BYTE = 120
POLL_SECONDS = 0.001

HELPER = f"""
import fcntl, os, struct, sys
SHARE = struct.pack("hhqqi", fcntl.F_RDLCK, os.SEEK_SET, {WAL_WRITE_LOCK_BYTE}, 1, 0)
FREE = struct.pack("hhqqi", fcntl.F_UNLCK, os.SEEK_SET, {WAL_WRITE_LOCK_BYTE}, 1, 0)
path, fd = sys.argv[1], -1
try:
    while os.read(0, 1):
        if fd < 0 or os.fstat(fd).st_nlink == 0:  # SQLite deleted the file: open the new one
            if fd >= 0:
                os.close(fd)
            fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, SHARE)
            answer = b"f"
        except BlockingIOError:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, SHARE)
            answer = b"r"
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, FREE)
        os.write(1, answer)
except Exception:
    try:
        os.write(1, b"x")
    except OSError:
        pass  # the API is gone
"""


class WriteLockWatch:
    """One database file's write lock, watched by one helper process; one wait is in
    flight at a time, and callers that come meanwhile share it. Use it from one event
    loop (the Inserter's)."""

    def __init__(self, database: str) -> None:
        self.shm_path = f"{database}-shm"
        self._helper: subprocess.Popen[bytes] | None = None
        self._waiting: asyncio.Future[bool] | None = None
        self._reading: tuple[asyncio.AbstractEventLoop, int] | None = None
        self._unsupported = sys.platform != "linux"

    async def released(self, timeout: float) -> bool:
        """Return when no other process holds the write lock (perhaps at once), or after
        ``timeout`` seconds, whichever is first: True when it was free when asked, so
        whatever refused the caller was not the write lock and the caller should not ask
        again at once; False when it waited (or, without a helper, slept a millisecond).
        Another writer may take the lock before the caller does: the caller tries, and
        comes back here if it lost."""
        if self._waiting is None or self._waiting.done():
            helper = self.start()
            if helper is None:
                await asyncio.sleep(POLL_SECONDS)
                return False
            assert helper.stdin is not None and helper.stdout is not None
            loop = asyncio.get_running_loop()
            self._waiting = waiting = loop.create_future()
            answers = helper.stdout.fileno()
            loop.add_reader(answers, self._answered, answers, waiting)
            self._reading = loop, answers
            try:
                helper.stdin.write(b"w")
            except OSError:  # the helper is gone
                log.warning("the SQLite write-lock helper is gone; polling from now on")
                self.close()
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self._waiting)
        except TimeoutError:
            return False

    def _answered(self, answers: int, waiting: asyncio.Future[bool]) -> None:
        self._stop_reading()
        try:
            answer = os.read(answers, 1)
        except OSError:
            answer = b""
        if answer not in (b"f", b"r"):
            log.warning("the SQLite write-lock helper stopped (%r); polling from now on", answer)
            self.close()
        if not waiting.done():
            waiting.set_result(answer != b"r")

    def start(self) -> subprocess.Popen[bytes] | None:
        """The helper, started now if it is not running and can be (a Python start, tens
        of milliseconds, that a first wait would otherwise spend); None when waits poll."""
        if self._unsupported:
            return None
        if self._helper is None:
            if not os.path.exists(self.shm_path):
                return None  # not in WAL mode yet, or an in-memory database
            try:
                self._helper = subprocess.Popen(
                    # -I -S: no site packages to import, no environment to read
                    [sys.executable, "-I", "-S", "-c", HELPER, self.shm_path],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    bufsize=0,
                    close_fds=True,
                    start_new_session=True,  # a Ctrl-C in the terminal is the API's
                )
            except OSError:
                log.warning("cannot start the SQLite write-lock helper; polling", exc_info=True)
                self._unsupported = True
                return None
        return self._helper

    def _stop_reading(self) -> None:
        if self._reading is not None:
            (loop, answers), self._reading = self._reading, None
            loop.remove_reader(answers)

    def close(self) -> None:
        """Stop the helper for good (waits poll from now on), also when a wait is in
        flight (it is blocked on the lock): the callers sharing that wait return as if
        the lock were free. Call on the loop."""
        self._unsupported = True
        self._stop_reading()
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(True)
        helper, self._helper = self._helper, None
        if helper is not None:
            with contextlib.suppress(OSError):
                helper.kill()
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                helper.wait(1)
            for pipe in (helper.stdin, helper.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
