"""The task ledger: one row per accepted task, written wherever the task runs.

State machine (docs/ledger.md draws it): PENDING → STARTED → PROGRESS → SUCCESS | FAILURE,
RETRY ↔ STARTED for transient errors, any non-final state → REVOKED on cancel. A row is
*claimed* by setting ``claim_token``; every later write by the runner is fenced on that
token, so a runner that lost its lease cannot overwrite its successor's result.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from backend.db.models.base import Base, JSONType, UTCDateTime, utcnow


class TaskRun(Base):
    __tablename__ = "task_runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(16), default="PENDING")
    priority: Mapped[int] = mapped_column(Integer, default=5)
    args: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    result: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    executor: Mapped[str] = mapped_column(String(10), default="celery")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    recoveries: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(300), nullable=True, unique=True)
    claim_token: Mapped[str | None] = mapped_column(String(36), nullable=True)
    runner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    dispatched_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("ix_task_runs_state_dispatched_at", "state", "dispatched_at"),
        Index("ix_task_runs_submitted_at", "submitted_at"),
        Index("ix_task_runs_name_submitted_at", "name", "submitted_at"),
    )
