"""Task events: every state change, told to whoever listens (GET /api/events).

The ledger is the truth; events are the news. Runners append each change to a capped Redis
stream (``syncq:events``) rather than PUBLISH it: a stream keeps the last few thousand
entries, so a client that reconnects with ``Last-Event-ID`` gets what it missed, and the
entry id is that Last-Event-ID. When Redis is down, the API process (whose local executor
is then the only runner) hands its events straight to its own listeners instead.

An event is best effort by design: a failure to tell never fails or slows a task.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from backend.constants import FINAL_STATES, Queue, TaskName

if TYPE_CHECKING:
    from backend.runtime.broker import Broker

log = logging.getLogger(__name__)

STREAM_MAXLEN = 10_000
STREAM_TTL_SECONDS = 7 * 24 * 3600
NOTIFICATION_QUEUE = Queue.DATABASE.value


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
        return asdict(self)


def notification_args(event: TaskEvent) -> dict[str, Any]:
    """The arguments of the notifications.record task for a task that ended."""
    return {
        "task_id": event.task_id,
        "task_name": event.name,
        "state": event.state,
        "error": event.error,
    }


def wants_notification(event: TaskEvent) -> bool:
    """Every task that ends, except the notification task itself (that would never end)
    and the successes of scheduled housekeeping (one row a minute says nothing)."""
    from backend.runtime.registry import get_spec

    if not event.final or event.name == TaskName.RECORD_NOTIFICATION:
        return False
    return not (event.state == "SUCCESS" and get_spec(event.name).scheduled)


class Fallback(Protocol):
    """Where an Announcer turns when Redis is down: the API's EventHub."""

    def deliver(self, kind: str, data: dict[str, Any]) -> None: ...

    def run_locally(self, task_id: str, name: str, args: dict[str, Any]) -> None: ...


class Announcer:
    """Appends events to the stream and, for a task that ended, sends the task that records
    its notification. Used by workers and by any runtime without local listeners.

    ``fallback`` (the API's hub) takes events and notifications Redis could not.
    """

    def __init__(self, broker: Broker, fallback: Fallback | None = None) -> None:
        self.broker = broker
        self.fallback = fallback

    async def __call__(self, event: TaskEvent) -> None:
        await self.publish("task", event.as_dict())
        if wants_notification(event):
            await self.notify(event)

    async def publish(self, kind: str, data: dict[str, Any]) -> None:
        redis_first = self.fallback is None or self.broker.up
        if redis_first and await self.broker.add_event(kind, data):
            return
        if self.fallback is not None:
            self.fallback.deliver(kind, data)

    async def notify(self, event: TaskEvent) -> None:
        args = notification_args(event)
        task_id = str(uuid.uuid4())
        if (self.fallback is None or self.broker.up) and await self.broker.publish(
            name=TaskName.RECORD_NOTIFICATION,
            task_id=task_id,
            kwargs=args,
            queue=NOTIFICATION_QUEUE,
            priority=3,
        ):
            return
        if self.fallback is not None:
            self.fallback.run_locally(task_id, TaskName.RECORD_NOTIFICATION, args)
        else:
            log.warning("notification for %s %s not sent", event.name, event.task_id)


def stream_fields(kind: str, data: dict[str, Any]) -> dict[Any, Any]:
    return {"kind": kind, "data": json.dumps(data, default=str)}
