"""The plain pattern's Celery app (``celery -A benchmarks.plain_pattern.celery_app worker``).

Redis is the broker and the result backend; the worker settings are syncq's (prefork,
acks_late, prefetch 1); results are kept (``ignore_result`` False, Celery's default).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from benchmarks.plain_pattern.db import Message, new_session

REDIS_URL = os.environ.get("PLAIN_REDIS_URL", "redis://127.0.0.1:6379/1")

app = Celery("plain", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)


@app.task(name="plain.save_message")  # type: ignore[untyped-decorator]
def save_message(session_id: str, role: str, content: str) -> dict[str, Any]:
    with new_session() as session:
        message = Message(session_id=session_id, role=role, content=content)
        session.add(message)
        session.commit()
        return {"id": message.id, "session_id": session_id}
