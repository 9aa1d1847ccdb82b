"""Logging for every process (API, worker, beat): one JSON object a line when the output is
not a terminal (log files, containers, the launcher), readable text on a terminal; and the
id of the task being run on every line written while it runs.
"""

from __future__ import annotations

import contextvars
import logging
import sys

from celery import current_task
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

# The task this coroutine runs (set by runtime/execution.py for the length of a run).
current_task_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "syncq_task_id", default=None
)

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s%(task_suffix)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
# Uvicorn configures its own loggers before it imports the app; hand them to ours.
FOREIGN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "flower")
# Celery's two INFO lines per task ("Task x[id] received", "Task x[id] succeeded in n s:
# <result repr>"): runtime/execution.py writes one line per outcome with the state the
# ledger recorded, so these only repeat it, at 5 % of a busy worker's time (py-spy; the
# result's repr included). Their warnings and errors still come through; DEBUG brings
# them back.
PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


class TaskIdFilter(logging.Filter):
    """Adds ``task_id``: ours, or Celery's current task for the lines Celery writes."""

    def filter(self, record: logging.LogRecord) -> bool:
        task_id = current_task_id.get() or _celery_task_id() or _from_celery_data(record)
        if task_id:
            record.task_id = task_id
        record.task_suffix = f"[{task_id}]" if task_id else ""
        return True


def _from_celery_data(record: logging.LogRecord) -> str | None:
    """Celery's worker lines ("Task x[id] received") carry the id in ``data``."""
    data = getattr(record, "data", None)
    task_id = data.get("id") if isinstance(data, dict) else None
    return task_id if isinstance(task_id, str) else None


def _celery_task_id() -> str | None:
    try:
        request = current_task.request if current_task else None
        task_id = getattr(request, "id", None)
        return task_id if isinstance(task_id, str) else None
    except Exception:
        return None


def use_json(fmt: str) -> bool:
    if fmt == "json":
        return True
    if fmt == "text":
        return False
    return not sys.stderr.isatty()


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Install one stderr handler on the root logger; idempotent, so every entry point
    (API lifespan, Celery's setup_logging signal) can call it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TaskIdFilter())
    formatter: logging.Formatter
    if use_json(fmt):
        formatter = JsonFormatter(
            JSON_FIELDS,
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            reserved_attrs=[*RESERVED_ATTRS, "task_suffix", "color_message"],
        )
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_syncq", False):
            root.removeHandler(old)
    handler._syncq = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in FOREIGN_LOGGERS:
        foreign = logging.getLogger(name)
        if foreign.handlers:  # switched off (no --access-log to backend.serve) stays off
            foreign.handlers.clear()
            foreign.propagate = True
    for name in PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING
        )
