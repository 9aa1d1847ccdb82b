"""Notifications: one row when a task ends (SUCCESS, FAILURE or REVOKED)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from backend.db.models.base import Base, JSONType, UTCDateTime
from backend.db.models.conversation import BigId


class Notification(Base):
    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(36))
    task_name: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16))
    level: Mapped[str] = mapped_column(String(8))  # info | warning | error
    message: Mapped[str] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    # A task ends once; a redelivered record task finds its row already there.
    __table_args__ = (
        UniqueConstraint("task_id", "state"),
        Index("ix_notifications_created_at", "created_at"),
    )
