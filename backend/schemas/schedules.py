"""The schedule listing."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class Schedule(BaseModel):
    name: str
    task: str
    schedule: str
    every_seconds: float
    last_run: datetime | None
    next_run: datetime | None
    enabled: bool
