"""A worker process's way to the events stream: write the command and go on.

A worker appends one entry pair per task (STARTED, SUCCESS) and then sat waiting for
Redis's answer, which it never used: an event is best effort (runtime/events.py), and a
lost one costs a listener nothing it cannot read from the ledger. Here the connection is
put in ``CLIENT REPLY OFF`` mode, so Redis sends no answers and the task's process is free
once the bytes are in the socket: no wait for the reply, no reply to parse.

Without replies a broken connection shows itself as the socket turning readable (EOF or
a reset; nothing else can arrive on it), which is checked before every write, so the
first events after Redis restarts go out on a new connection instead of into a dead one.
Without replies there is no NOSCRIPT either, so the command is EVAL with the script's
text (Redis keeps it compiled under its SHA1; the text is 200 bytes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import RedisError

from backend.constants import EVENTS_STREAM
from backend.runtime.broker import APPEND_EVENTS, event_args
from backend.runtime.events import Item

log = logging.getLogger(__name__)


class StreamWriter:
    """Appends events to ``syncq:events`` without waiting for Redis (one per process).

    ``timeout`` bounds connecting and each write: a Redis that stopped reading fills the
    socket's buffer, and then a write waits that long once, fails, and the connection is
    dropped (the worker passes ``BROKER_PROBE_TIMEOUT``, as the client it replaces had).
    """

    def __init__(self, url: str, timeout: float) -> None:
        self._pool = redis.ConnectionPool.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        self._connection: Any = None

    @property
    def up(self) -> bool:
        """Always worth a try: a write that fails costs one short timeout, once."""
        return True

    async def add_events(self, items: Sequence[Item]) -> bool:
        """Hand the events to the socket; False when there was no connection to take them
        (the next call connects again)."""
        if not items:
            return True
        try:
            connection = self._connected()
            connection.send_packed_command(
                connection.pack_command(
                    "EVAL", APPEND_EVENTS, 1, EVENTS_STREAM, *event_args(items)
                ),
                check_health=False,
            )
        except (RedisError, OSError) as exc:
            log.debug("events not written: %s", exc)
            self.close()
            return False
        return True

    def _connected(self) -> Any:
        if self._connection is not None and _closed(self._connection):
            self.close()
        if self._connection is None:
            connection: Any = self._pool.make_connection()  # (redis-py leaves it untyped)
            connection.connect()  # AUTH and SELECT (with their replies) happen here
            connection.send_command("CLIENT", "REPLY", "OFF", check_health=False)
            self._connection = connection
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.disconnect()
            self._connection = None


def _closed(connection: Any) -> bool:
    """Readable means closed: a connection with replies off is sent nothing else."""
    try:
        return bool(connection.can_read(timeout=0))
    except (RedisError, OSError):
        return True
