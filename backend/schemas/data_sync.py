"""Data-sync requests and responses."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

from backend.constants import COLUMN_PATTERN, DATASET_PATTERN
from backend.schemas.types import JSON_INTEGER

__all__ = ["COLUMN_PATTERN", "DATASET_PATTERN"]  # the routers take them from here

Priority = Annotated[int, Field(ge=0, le=9, description="9 runs first"), JSON_INTEGER]
FileId = Annotated[int, Field(ge=1, le=2**31 - 1), JSON_INTEGER]


class SyncSingle(BaseModel):
    file_id: FileId
    priority: Priority = 5


class SyncBatch(BaseModel):
    file_ids: list[FileId] = Field(min_length=1, max_length=500)
    priority: Priority = 5


class SyncAccepted(BaseModel):
    celery_task_id: str
    task_id: str
    status: str
    executor: str


class BatchAccepted(BaseModel):
    task_ids: list[str]


class FileAccepted(BaseModel):
    """Registration still running: its result will hold the ``file_id``."""

    task_id: str


class FileRegistered(BaseModel):
    file_id: int
    task_id: str
    duplicate: bool


class FileRows(BaseModel):
    read: int
    inserted: int
    updated: int
    unchanged: int
    rejected: int


class FileOut(BaseModel):
    """A registered file as every answer shows it (the list, a dataset's files); the task
    bodies build it here too, so its shape is written once."""

    file_id: int
    original_name: str
    format: str
    size: int
    checksum: str
    dataset: str
    registered_at: str
    last_sync_state: str | None
    last_sync_task_id: str | None
    last_synced_at: str | None
    rows: FileRows

    @classmethod
    def of(cls, f: Any) -> FileOut:
        """From a ``sync_files`` row (db/models/data_sync.py ``SyncFile``)."""
        return cls(
            file_id=f.id,
            original_name=f.original_name,
            format=f.format,
            size=f.size,
            checksum=f.checksum,
            dataset=f.dataset,
            registered_at=f.registered_at.isoformat(),
            last_sync_state=f.last_sync_state,
            last_sync_task_id=f.last_sync_task_id,
            last_synced_at=f.last_synced_at.isoformat() if f.last_synced_at else None,
            rows=FileRows(
                read=f.rows_read,
                inserted=f.rows_inserted,
                updated=f.rows_updated,
                unchanged=f.rows_unchanged,
                rejected=f.rows_rejected,
            ),
        )


class DatasetOut(BaseModel):
    dataset: str
    key_columns: list[str]
    record_count: int
    files: list[FileOut]


class RecordOut(BaseModel):
    key: str
    data: dict[str, Any]
    source_file_id: int
    updated_at: str

    @classmethod
    def of(cls, r: Any) -> RecordOut:
        """From a ``records`` row."""
        return cls(
            key=r.key,
            data=r.data,
            source_file_id=r.source_file_id,
            updated_at=r.updated_at.isoformat(),
        )


class RecordsPage(BaseModel):
    dataset: str
    limit: int
    offset: int
    records: list[RecordOut]
