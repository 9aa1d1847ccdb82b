"""Typed SQLAlchemy models; importing this package registers every table on ``Base``."""

from backend.db.models.base import Base
from backend.db.models.conversation import ConversationMessage
from backend.db.models.data_sync import Dataset, Record, SyncCheckpoint, SyncError, SyncFile
from backend.db.models.exports import Export
from backend.db.models.notification import Notification
from backend.db.models.task_run import TaskRun

__all__ = [
    "Base",
    "ConversationMessage",
    "Dataset",
    "Export",
    "Notification",
    "Record",
    "SyncCheckpoint",
    "SyncError",
    "SyncFile",
    "TaskRun",
]
