"""The runtime: submit, status, cancel, wait and recover tasks, wherever they run.

Routers use only what is exported here (and task names from backend.constants).
"""

from backend.runtime.local import ExecutorFull
from backend.runtime.registry import UnknownTask, get_spec
from backend.runtime.service import (
    Health,
    NoWorkerAnswered,
    Runtime,
    StatusView,
    Submission,
    TaskAlreadyFinished,
    TaskFailed,
    TaskNotFound,
)

__all__ = [
    "ExecutorFull",
    "Health",
    "NoWorkerAnswered",
    "Runtime",
    "StatusView",
    "Submission",
    "TaskAlreadyFinished",
    "TaskFailed",
    "TaskNotFound",
    "UnknownTask",
    "get_spec",
]
