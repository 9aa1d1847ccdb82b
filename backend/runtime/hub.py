"""The API process's end of the events stream: one reader, many listeners, a short memory.

One background reader follows ``syncq:events`` (XREAD BLOCK) and hands every entry to each
SSE client's queue, so a thousand listeners cost one Redis connection, not a thousand. The
last entries are kept in memory for replay after a reconnect; older ones are read back from
the stream. With Redis down, the local executor's events come straight here
(``deliver``) with ids in the stream's own ``<ms>-<seq>`` form, so Last-Event-ID keeps
working across the switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from backend.constants import EVENTS_STREAM
from backend.runtime.broker import Broker

log = logging.getLogger(__name__)

REPLAY_MEMORY = 2_000
LISTENER_BACKLOG = 1_000
READ_BLOCK_MS = 1_000
IDLE_READ_SECONDS = 60.0


@dataclass(frozen=True)
class Event:
    id: str
    kind: str  # "task" | "notification"
    data: dict[str, Any]


def parse_id(event_id: str) -> tuple[int, int]:
    """Order of stream ids; a malformed Last-Event-ID counts as 'from the beginning'."""
    ms, _, seq = event_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0


class Listener:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(LISTENER_BACKLOG)

    def offer(self, event: Event) -> bool:
        try:
            self.queue.put_nowait(event)
            return True
        except asyncio.QueueFull:
            return False

    def close(self) -> None:
        """Too slow to keep up: end its stream; it reconnects and replays what it missed."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class EventHub:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        settings = broker.settings
        self._redis = aioredis.Redis.from_url(
            settings.celery_broker_url,
            socket_connect_timeout=settings.broker_probe_timeout,
            socket_timeout=READ_BLOCK_MS / 1000 + 2,
            decode_responses=True,
        )
        self._memory: deque[Event] = deque(maxlen=REPLAY_MEMORY)
        self._listeners: set[Listener] = set()
        self._last: tuple[int, int] = (0, 0)
        self._wanted = asyncio.Event()  # someone listens: the reader runs
        self._reading = asyncio.Event()  # the reader has its position in the stream
        self._deserted_at = -IDLE_READ_SECONDS  # loop time the last listener left

    # -- Fallback (runtime/events.py): Redis is down ----------------------------------

    def deliver(self, kind: str, data: dict[str, Any]) -> None:
        ms = max(int(time.time() * 1000), self._last[0])
        seq = self._last[1] + 1 if ms == self._last[0] else 0
        self._fan_out(Event(f"{ms}-{seq}", kind, data))

    # -- listeners --------------------------------------------------------------------

    async def wake(self) -> None:
        """Have the reader running, positioned in the stream, before a client is told its
        stream is open (call it before the SSE response starts): whatever that client
        causes from then on is read. A reader positioned only after the response began
        could take its place after the client's first events and miss them."""
        self._deserted_at = asyncio.get_running_loop().time()  # no pause meanwhile
        self._wanted.set()
        if not self._reading.is_set() and self.broker.up:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reading.wait(), READ_BLOCK_MS / 1000)

    @contextlib.asynccontextmanager
    async def listen(self) -> AsyncIterator[asyncio.Queue[Event | None]]:
        listener = Listener()
        self._listeners.add(listener)
        self._wanted.set()
        try:
            yield listener.queue
        finally:
            self._listeners.discard(listener)
            if not self._listeners:
                self._deserted_at = asyncio.get_running_loop().time()

    @staticmethod
    def older_or_same(event_id: str, than: str) -> bool:
        return parse_id(event_id) <= parse_id(than)

    async def replay(self, after: str, limit: int = REPLAY_MEMORY) -> list[Event]:
        """Events after ``after``: from memory, and from the stream for what memory lost."""
        start = parse_id(after)
        remembered = [e for e in self._memory if parse_id(e.id) > start]
        oldest = parse_id(self._memory[0].id) if self._memory else None
        older: list[Event] = []
        if (oldest is None or oldest > start) and self.broker.up:
            upper = f"({self._memory[0].id}" if self._memory else "+"
            entries: Any
            try:
                entries = await self._redis.xrange(
                    EVENTS_STREAM, min=f"({start[0]}-{start[1]}", max=upper, count=limit
                )
            except (RedisError, OSError):
                entries = []
            older = [_event(entry_id, fields) for entry_id, fields in entries]
        return (older + remembered)[-limit:]

    def _fan_out(self, event: Event) -> None:
        self._last = max(self._last, parse_id(event.id))
        self._memory.append(event)
        for listener in list(self._listeners):
            if not listener.offer(event):
                self._listeners.discard(listener)
                listener.close()

    # -- the one reader ---------------------------------------------------------------

    async def follow(self) -> None:
        """Read the stream while anyone listens, for as long as the API runs; wait out Redis
        outages.

        A minute after the last listener left it stops reading (a client reconnecting
        within it finds the memory whole): every task writes two or three events, and
        reading them for nobody cost the API 7.7 % of its time under load. It starts again
        at the stream's newest entry with an empty memory, and a replay reads what it
        needs from the stream itself. (With Redis down at that moment the memory is kept:
        it holds the local executor's events, which the stream never had.)"""
        loop = asyncio.get_running_loop()
        position: Any = None
        response: Any
        while True:
            if not self._listeners and loop.time() - self._deserted_at >= IDLE_READ_SECONDS:
                self._reading.clear()
                self._wanted.clear()
                await self._wanted.wait()
                position = None
                if self.broker.up:
                    self._memory.clear()
            if not self.broker.up:
                await asyncio.sleep(0.5)
                continue
            try:
                if position is None:
                    newest: Any = await self._redis.xrevrange(EVENTS_STREAM, count=1)
                    position = newest[0][0] if newest else "0-0"
                    self._reading.set()
                response = await self._redis.xread(
                    {EVENTS_STREAM: position}, block=READ_BLOCK_MS, count=500
                )
            except (RedisError, OSError):
                await asyncio.sleep(0.5)
                continue
            for _stream, entries in response:
                for entry_id, fields in entries:
                    position = entry_id
                    self._fan_out(_event(entry_id, fields))

    async def close(self) -> None:
        for listener in list(self._listeners):
            listener.close()
        await self._redis.aclose()


def _event(entry_id: str, fields: dict[str, str]) -> Event:
    try:
        data = json.loads(fields.get("data", "{}"))
    except ValueError:
        data = {}
    return Event(entry_id, fields.get("kind", "task"), data)
