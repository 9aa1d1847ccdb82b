"""Notifications recorded when tasks end."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from backend.schemas.tasks import TaskError


class Notification(BaseModel):
    id: int
    task_id: str
    task_name: str
    state: str
    level: str
    message: str
    error: TaskError | None = None
    created_at: datetime
