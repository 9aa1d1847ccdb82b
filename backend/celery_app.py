"""The Celery app: ``celery -A backend.celery_app worker|beat|flower``.

Importing ``backend.tasks`` registers every task body; the app is then made from the
settings the environment gives (backend/runtime/celery_config.py says how).
"""

from __future__ import annotations

import backend.tasks  # noqa: F401  (registers the task bodies before the app binds them)
from backend.config import get_settings
from backend.runtime.celery_config import beat_schedule, create_celery_app

__all__ = ["app", "beat_schedule", "create_celery_app"]

app = create_celery_app(get_settings())
