"""The runtime: submit, status, cancel, wait and recover tasks, wherever they run.

Routers use only what is exported here (and task names from backend.constants).
"""

from backend.runtime.hub import Event, EventHub
from backend.runtime.inspect import WorkerView
from backend.runtime.local import ExecutorFull
from backend.runtime.metrics import METRICS_CONTENT_TYPE
from backend.runtime.registry import UnknownTask, get_spec
from backend.runtime.report_schedules import delete as delete_report_schedule
from backend.runtime.report_schedules import save as save_report_schedule
from backend.runtime.schedules import ScheduleEntry, UnknownSchedule
from backend.runtime.service import (
    Health,
    NoWorkerAnswered,
    QueueView,
    Runtime,
    StatusView,
    Submission,
    TaskAlreadyFinished,
    TaskFailed,
    TaskNotFound,
)

__all__ = [
    "METRICS_CONTENT_TYPE",
    "Event",
    "EventHub",
    "ExecutorFull",
    "Health",
    "NoWorkerAnswered",
    "QueueView",
    "Runtime",
    "ScheduleEntry",
    "StatusView",
    "Submission",
    "TaskAlreadyFinished",
    "TaskFailed",
    "TaskNotFound",
    "UnknownSchedule",
    "UnknownTask",
    "WorkerView",
    "delete_report_schedule",
    "get_spec",
    "save_report_schedule",
]
