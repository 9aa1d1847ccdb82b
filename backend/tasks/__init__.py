"""Task bodies, one module per domain. Importing this package registers them all."""

from backend.tasks import conversation, system

__all__ = ["conversation", "system"]
