"""Task bodies, one module per domain. Importing this package registers them all."""

from backend.tasks import (
    cleanup,
    conversation,
    data_sync,
    exports,
    notifications,
    reports,
    system,
)

__all__ = [
    "cleanup",
    "conversation",
    "data_sync",
    "exports",
    "notifications",
    "reports",
    "system",
]
