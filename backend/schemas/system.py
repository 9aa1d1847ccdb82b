"""What /api/system answers: live workers and queue lengths."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ActiveTask(BaseModel):
    task_id: str | None
    name: str | None
    started: float | None = None


class Worker(BaseModel):
    name: str
    ping: bool
    active: list[ActiveTask]
    pool: str | None
    concurrency: int | None
    queues: list[str]
    last_seen_seconds: float | None


class Workers(BaseModel):
    broker: str  # up | down
    workers: list[Worker]
    elapsed_ms: float


class Queues(BaseModel):
    broker: str  # up | down
    queues: dict[str, int | None]
    unacked: int | None
    local_executor: dict[str, Any]


class FinishedInMinute(BaseModel):
    minute: str  # "YYYY-MM-DD HH:MM", UTC
    state: str  # SUCCESS | FAILURE | REVOKED
    count: int


class Throughput(BaseModel):
    """Runs finished per minute and state, from the ledger (every executor)."""

    minutes: int
    finished: list[FinishedInMinute]
