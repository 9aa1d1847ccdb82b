"""Task bodies, one module per domain. Importing this package registers them all."""

from backend.tasks import system

__all__ = ["system"]
