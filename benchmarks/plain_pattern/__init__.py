"""The plain pattern syncq replaces, for benchmarks/bench_against_plain.py.

What an ERP or chatbot backend typically does: an ``async def`` FastAPI route calls
``save_message.delay(...)`` and answers 202 with the Celery task id; a Celery task stores
the message with a sync SQLAlchemy session; ``GET /api/tasks/{id}`` reads ``AsyncResult``
from the Redis result backend. No ledger, no claim, no events.

    PLAIN_REDIS_URL=redis://127.0.0.1:6379/1 PLAIN_DATABASE_URL=sqlite:///plain.db \\
        python -m backend.serve --app benchmarks.plain_pattern.app:app
    celery -A benchmarks.plain_pattern.celery_app worker -c 2
"""
