"""The one settings object. Every environment variable the project reads is read here.

Settings are built on demand (``get_settings()``), never at import of another module, so a
test or a launcher can set the environment first and still get what it set.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    data_dir: Path = Path("./data")
    database_url: str = ""

    redis_url: str = ""
    redis_host: str | None = None
    redis_port: int | None = None
    redis_db: int | None = None
    redis_password: str | None = None
    celery_broker_url: str = ""
    celery_result_backend: str = ""

    api_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Celery reliability knobs.
    task_soft_time_limit: int = 300
    task_time_limit: int = 600
    task_max_retries: int = 3
    task_retry_backoff_max: int = 60
    result_expires_seconds: int = 24 * 3600
    worker_concurrency: int | None = None

    # Runtime: leases, recovery and the local executor.
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 5.0
    pending_redispatch_seconds: float = 600.0
    recovery_interval_seconds: float = 30.0
    max_attempts: int = 3
    broker_probe_timeout: float = 0.25
    broker_probe_ttl: float = 2.0
    broker_publish_timeout: float = 2.0
    local_concurrency: int = 4
    local_queue_size: int = 1000
    idempotency_ttl_seconds: int = 24 * 3600

    # Conversations.
    responder: str = "backend.responders:EchoResponder"
    conversation_retention_days: float = 30.0

    # Scheduled work (RedBeat): intervals in seconds, retention in days.
    schedule_recovery_seconds: float = 30.0
    schedule_cleanup_seconds: float = 3600.0
    schedule_inbox_seconds: float = 60.0
    redbeat_lock_timeout: int = 30
    task_run_retention_days: float = 7.0
    sync_error_retention_days: float = 30.0
    # Stored uploads no file row points at, and half-written ones, are removed once older
    # than this (younger ones may belong to a registration still waiting in the queue).
    upload_sweep_age_seconds: float = 24 * 3600.0

    # Metrics (GET /metrics, backend/runtime/metrics.py). PROMETHEUS_MULTIPROC_DIR: the
    # directory where every process writes its metrics for the API to add up; it must be
    # in the environment itself (prometheus-client reads it when imported). Loopback: let
    # a scraper on 127.0.0.1/::1 in without a token (not behind a proxy on the same host).
    prometheus_multiproc_dir: str = ""
    metrics_public_on_loopback: bool = False
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    worker_metrics_address: str = "127.0.0.1"

    # Logging: json | text | auto (JSON unless stderr is a terminal).
    log_level: str = "INFO"
    log_format: str = "auto"

    # Data sync. A batch (one transaction, one checkpoint) ends at SYNC_BATCH_SIZE rows or
    # once its rows' JSON reaches SYNC_BATCH_BYTES, whichever comes first: 5,000 rows of
    # 8 MB each would otherwise be held at once. A re-sync reads the next batch while the
    # database looks up this one, so two batches can be held; once its rows come back
    # mostly unchanged it reads four batches' rows at a time (the byte limit still holds).
    max_upload_bytes: int = 512 * 1024 * 1024
    sync_batch_size: int = Field(default=5000, ge=1)
    sync_batch_bytes: int = Field(default=32 * 1024 * 1024, ge=1)

    # Exports and reports. A finished export's file and row are kept this long, then the
    # scheduled cleanup (purge-exports) removes both; records are read and written in
    # batches of EXPORT_BATCH_SIZE (a cancel is seen between two); a report answers at most
    # REPORT_MAX_GROUPS groups (more fails the report readably; the result must also fit
    # MAX_RESULT_BYTES).
    export_retention_hours: float = Field(default=24.0, gt=0)
    export_batch_size: int = Field(default=5000, ge=1, le=100_000)
    report_max_groups: int = Field(default=10_000, ge=1)

    # XLSX: a workbook is a zip of XML, so a small upload can unpack to far more than it
    # weighs, and openpyxl believes whatever sizes it declares. The archive is measured
    # before it is opened (total unpacked size; ratio of each member over 1 MiB), and the
    # sheet is read by a child process held to the rest (backend/files/xlsx.py). The
    # defaults are XlsxLimits' in backend/files/readers.py.
    xlsx_max_unpacked_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    xlsx_max_compression_ratio: float = Field(default=100.0, ge=1)
    xlsx_parse_memory_bytes: int = Field(default=512 * 1024 * 1024, ge=128 * 1024 * 1024)
    # Under TASK_SOFT_TIME_LIMIT, so a slow workbook fails readably before the task is cut.
    xlsx_parse_seconds: float = Field(default=240.0, gt=0)
    xlsx_max_spool_bytes: int = Field(default=1024 * 1024 * 1024, ge=1)  # rows as JSON Lines

    # Results: the most a task's result may take in the ledger, as JSON. A larger one ends
    # its task FAILURE (ResultTooLarge) instead of being stored, so one task cannot fill the
    # ledger or every status poll of it; reads that page (conversations) fill their pages
    # up to it and no further. At least 1 KiB: room for a status-sized answer.
    max_result_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if not self.redis_url:
            self.redis_url = self._assemble_redis_url()
        self.celery_broker_url = self.celery_broker_url or self.redis_url
        self.celery_result_backend = self.celery_result_backend or self.redis_url
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir / 'syncq.db'}"
        if not self.api_tokens and self.token_file.is_file():
            token = self.token_file.read_text().strip()
            if token:
                self.api_tokens = [token]
        return self

    def _assemble_redis_url(self) -> str:
        if not any((self.redis_host, self.redis_port, self.redis_db, self.redis_password)):
            return DEFAULT_REDIS_URL
        auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
        host = self.redis_host or "127.0.0.1"
        return f"redis://{auth}{host}:{self.redis_port or 6379}/{self.redis_db or 0}"

    @property
    def token_file(self) -> Path:
        return self.data_dir / "api_token"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
