"""Typed SQLAlchemy models; importing this package registers every table on ``Base``."""

from backend.db.models.base import Base
from backend.db.models.conversation import ConversationMessage
from backend.db.models.task_run import TaskRun

__all__ = ["Base", "ConversationMessage", "TaskRun"]
