"""Data sync: datasets, the files registered into them, their records, rejected rows, and
the checkpoint that lets a killed sync resume where its last committed batch ended."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from backend.db.models.base import Base, JSONType, UTCDateTime, utcnow
from backend.db.models.conversation import BigId


class Dataset(Base):
    __tablename__ = "datasets"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    key_columns: Mapped[list[str]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The header columns of the files synced into it, in their order (first seen first):
    # the order an export writes them in (PostgreSQL's JSONB keeps no key order).
    columns: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)


class SyncFile(Base):
    __tablename__ = "sync_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    original_name: Mapped[str] = mapped_column(String(255))
    stored_path: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(10))
    size: Mapped[int] = mapped_column(BigId)
    # The same bytes registered again (for the same dataset) give this file back.
    checksum: Mapped[str] = mapped_column(String(64))
    dataset: Mapped[str] = mapped_column(ForeignKey("datasets.name"))
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_sync_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_sync_task_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    last_synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    rows_read: Mapped[int] = mapped_column(Integer, default=0)
    rows_inserted: Mapped[int] = mapped_column(Integer, default=0)
    rows_updated: Mapped[int] = mapped_column(Integer, default=0)
    rows_unchanged: Mapped[int] = mapped_column(Integer, default=0)
    rows_rejected: Mapped[int] = mapped_column(Integer, default=0)
    # What a sync's whole-file pre-pass found (readers.FileInfo.layout), with the stored
    # file's size, mtime, inode and ctime then: a later sync of the same unchanged file
    # starts from it (tasks/data_sync.py, _passed_before).
    layout: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)

    __table_args__ = (UniqueConstraint("dataset", "checksum"),)


class Record(Base):
    __tablename__ = "records"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    dataset: Mapped[str] = mapped_column(String(100))
    # The key columns' values as a JSON array: the natural key every upsert is keyed by.
    key: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # A digest of ``data``: an unchanged row is recognised without comparing JSON.
    row_hash: Mapped[str] = mapped_column(String(32))
    source_file_id: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("dataset", "key"),)


class SyncError(Base):
    __tablename__ = "sync_errors"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("sync_files.id", ondelete="CASCADE"))
    task_id: Mapped[str] = mapped_column(String(36))
    row_number: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_sync_errors_file_id_row_number", "file_id", "row_number"),
        Index("ix_sync_errors_created_at", "created_at"),
    )


class SyncCheckpoint(Base):
    """Written in the same transaction as each batch, so it never runs ahead of the data."""

    __tablename__ = "sync_checkpoints"

    task_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("sync_files.id", ondelete="CASCADE"))
    rows_done: Mapped[int] = mapped_column(Integer, default=0)
    counts: Mapped[dict[str, int]] = mapped_column(JSONType)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
