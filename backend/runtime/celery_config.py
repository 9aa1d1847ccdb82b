"""How a Celery app for syncq is made: broker and result backend from settings, queues,
routes, reliability settings and the RedBeat schedule, and one Celery task per registered
spec (backend/runtime/registry.py).

``backend.celery_app`` (what ``celery -A`` loads) imports the task modules and makes the
app from here; the API, a starting worker and the recovery task make theirs the same way.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery
from kombu.entity import Queue as KombuQueue

from backend.config import Settings
from backend.constants import ALL_QUEUES, Queue, TaskName
from backend.runtime.registry import all_specs
from backend.runtime.transport import TRANSPORT
from backend.runtime.worker import bind_tasks


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The schedule, defined once; intervals come from settings."""
    entries = {
        "recovery-sweep": (TaskName.RECOVER, settings.schedule_recovery_seconds),
        "purge-conversations": (TaskName.PURGE_CONVERSATIONS, settings.schedule_cleanup_seconds),
        "purge-task-runs": (TaskName.PURGE_TASK_RUNS, settings.schedule_cleanup_seconds),
        "sweep-uploads": (TaskName.SWEEP_UPLOADS, settings.schedule_cleanup_seconds),
        "purge-exports": (TaskName.PURGE_EXPORTS, settings.schedule_cleanup_seconds),
        "inbox-scan": (TaskName.SCAN_INBOX, settings.schedule_inbox_seconds),
    }
    return {
        name: {
            "task": str(task_name),
            "schedule": timedelta(seconds=seconds),
            "options": {"queue": Queue.SCHEDULED.value, "expires": seconds},
        }
        for name, (task_name, seconds) in entries.items()
    }


def create_celery_app(settings: Settings) -> Celery:
    app = Celery("syncq", broker=settings.celery_broker_url, backend=settings.celery_result_backend)
    routes = {spec.name: {"queue": spec.queue} for spec in all_specs()}
    app.conf.update(
        task_queues=[KombuQueue(name, routing_key=name) for name in ALL_QUEUES],  # type: ignore[no-untyped-call]
        task_default_queue=Queue.DEFAULT.value,
        task_routes=routes,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        # Reliability: a message is acked only after its task ran, and a task whose worker
        # died goes back to the queue; each process takes one message at a time so a long
        # sync never hides a queued urgent one.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # The soft limit is enforced on the task's event loop (runtime/execution.py); the
        # hard limit kills a process whose body blocked its loop.
        task_time_limit=settings.task_time_limit,
        result_expires=settings.result_expires_seconds,
        task_default_priority=4,
        broker_connection_retry_on_startup=True,
        broker_transport=(TRANSPORT if settings.celery_broker_url.startswith("redis://") else None),
        broker_transport_options={
            # Priorities on Redis: one list per step; 0 is served first (see runtime/broker.py).
            "priority_steps": list(range(10)),
            "sep": ":",
            "queue_order_strategy": "priority",
            # Bound kombu's connection retries so publishing never hangs on a dead Redis.
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.1,
            "interval_max": 0.2,
            "socket_connect_timeout": 1.0,
            "socket_timeout": 5.0,
            "visibility_timeout": settings.task_time_limit + 300,
        },
        result_backend_transport_options={"retry_policy": {"max_retries": 2, "timeout": 1.0}},
        redis_socket_connect_timeout=1.0,
        redis_socket_timeout=5.0,
        # Task events (received/started/succeeded, a PUBLISH each) are for Flower: off
        # unless someone watches. `celery worker -E` (the launcher, when it starts Flower)
        # or Flower's own enable_events turns them on; they cost 8.6 % of a busy worker.
        worker_send_task_events=False,
        worker_concurrency=settings.worker_concurrency,
        worker_hijack_root_logger=False,
        # RedBeat keeps the schedule and last-run times in Redis; its lock lets exactly one
        # of several beat processes send, and a standby takes over once the lock expires
        # (RedBeat's default of 25 minutes is far too long for the recovery sweep).
        beat_scheduler="redbeat.RedBeatScheduler",
        redbeat_redis_url=settings.redis_url,
        redbeat_lock_timeout=settings.redbeat_lock_timeout,
        beat_max_loop_interval=max(1, min(5, settings.redbeat_lock_timeout // 3)),
        beat_schedule=beat_schedule(settings),
    )
    bind_tasks(app, settings)
    return app
