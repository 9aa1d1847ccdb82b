"""Task bodies, one module per domain. Importing this package registers them all."""

from backend.tasks import conversation, data_sync, system

__all__ = ["conversation", "data_sync", "system"]
