"""Data-sync requests and responses."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, Field

from backend.constants import COLUMN_PATTERN, DATASET_PATTERN
from backend.schemas.types import JSON_INTEGER

__all__ = ["COLUMN_PATTERN", "DATASET_PATTERN"]  # the routers take them from here

DatasetPath = Annotated[str, Path(pattern=DATASET_PATTERN)]
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


class RecordsPage(BaseModel):
    dataset: str
    limit: int
    offset: int
    records: list[RecordOut]
