"""syncq: an async-first data-sync backend (FastAPI in front, Celery on Redis behind)."""
