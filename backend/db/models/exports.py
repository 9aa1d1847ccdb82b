"""Exports: a dataset written to a file under ``DATA_DIR/exports`` by one task.

The export's id is the id of the task that makes it, so a client holds it from the 202
on, before the task has started (until then only the ledger knows it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from backend.db.models.base import Base, JSONType, UTCDateTime
from backend.db.models.conversation import BigId


class Export(Base):
    __tablename__ = "exports"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    dataset: Mapped[str] = mapped_column(String(100))
    format: Mapped[str] = mapped_column(String(8))
    encoding: Mapped[str] = mapped_column(String(16))
    # As asked (None: every column); once finished, the header actually written.
    columns: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    filter: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # STARTED while a run writes it; SUCCESS, FAILURE or REVOKED once it ended. A run that
    # died leaves STARTED: readers take the final state from the ledger then.
    state: Mapped[str] = mapped_column(String(16))
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    rows: Mapped[int] = mapped_column(BigId, default=0)
    bytes: Mapped[int] = mapped_column(BigId, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_exports_expires_at", "expires_at"),)
