"""Task events: every state change, told to whoever listens (GET /api/events).

The ledger is the truth; events are the news (a notification is a row written by the
transaction that ends a task; the stream only tells of it). Runners append each change to a
capped Redis stream (``syncq:events``) rather than PUBLISH it: a stream keeps the last few thousand
entries, so a client that reconnects with ``Last-Event-ID`` gets what it missed, and the
entry id is that Last-Event-ID. When Redis is down, the API process (whose local executor
is then the only runner) hands its events straight to its own listeners instead.

An event is best effort by design: a failure to tell never fails or slows a task.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from backend.constants import FINAL_STATES

log = logging.getLogger(__name__)

STREAM_MAXLEN = 10_000
STREAM_TTL_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class TaskEvent:
    task_id: str
    name: str
    state: str
    executor: str
    progress: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    attempt: int | None = None
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def as_dict(self) -> dict[str, Any]:
        # Spelled out: ``dataclasses.asdict`` deep-copies every value, and this runs for
        # every event of every task (6.5 % of the API's submit in py-spy).
        return {
            "task_id": self.task_id,
            "name": self.name,
            "state": self.state,
            "executor": self.executor,
            "progress": self.progress,
            "error": self.error,
            "attempt": self.attempt,
            "at": self.at,
        }


Item = tuple[str, dict[str, Any]]  # (kind, data): "task" or "notification"


class Stream(Protocol):
    """Where events go first: the Redis stream (runtime/broker.py's ``Broker``)."""

    @property
    def up(self) -> bool: ...

    async def add_events(self, items: Sequence[Item]) -> bool: ...


class Fallback(Protocol):
    """Where an Announcer turns when Redis is down: the API's EventHub."""

    def deliver(self, kind: str, data: dict[str, Any]) -> None: ...


class Announcer:
    """Appends events to the stream: what one run has to tell goes in one round trip
    (its state changes and the notification its finishing transaction recorded).

    ``fallback`` (the API's hub) takes the events Redis could not.
    """

    def __init__(self, broker: Stream, fallback: Fallback | None = None) -> None:
        self.broker = broker
        self.fallback = fallback

    async def __call__(self, *events: TaskEvent, notices: Sequence[dict[str, Any]] = ()) -> None:
        items = [("task", e.as_dict()) for e in events]
        items += [("notification", n) for n in notices]
        await self.publish_many(items)

    async def publish(self, kind: str, data: dict[str, Any]) -> None:
        await self.publish_many([(kind, data)])

    async def publish_many(self, items: Sequence[Item]) -> None:
        if not items:
            return
        redis_first = self.fallback is None or self.broker.up
        if redis_first and await self.broker.add_events(items):
            return
        if self.fallback is not None:
            for kind, data in items:
                self.fallback.deliver(kind, data)


def stream_fields(kind: str, data: dict[str, Any]) -> dict[Any, Any]:
    return {"kind": kind, "data": json.dumps(data, default=str)}
