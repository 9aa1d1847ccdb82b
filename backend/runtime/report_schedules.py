"""RedBeat entries made through the API: a scheduled report (``POST …/reports`` with
``every_seconds``) is an entry ``report-<report id>`` in Redis, beside the static ones of
the Celery app's ``beat_schedule``. Beat sends ``reports.scheduled_report`` with the
report's arguments at each interval; the worker adopts each firing into the ledger like
any scheduled task. Removing the entry stops it.

RedBeat's client is synchronous: call these from a thread."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery
from redbeat.schedulers import RedBeatSchedulerEntry, ensure_conf

from backend.constants import Queue, TaskName

PREFIX = "report-"


def entry_name(report_id: str) -> str:
    return f"{PREFIX}{report_id}"


def save(app: Celery, report_id: str, every_seconds: float, kwargs: dict[str, Any]) -> str:
    """Create (or replace) the report's entry; its name."""
    ensure_conf(app)
    name = entry_name(report_id)
    RedBeatSchedulerEntry(
        name=name,
        task=str(TaskName.SCHEDULED_REPORT),
        schedule=timedelta(seconds=every_seconds),
        kwargs={**kwargs, "schedule": name},
        # A firing nobody ran within its interval is dropped, as for the static entries.
        options={"queue": Queue.DATA_SYNC.value, "expires": every_seconds},
        app=app,
    ).save()
    return name


def delete(app: Celery, report_id: str) -> bool:
    """Remove the report's entry; False when there was none."""
    ensure_conf(app)
    try:
        entry = RedBeatSchedulerEntry.from_key(
            RedBeatSchedulerEntry.generate_key(app, entry_name(report_id)), app=app
        )
    except KeyError:
        return False
    entry.delete()
    return True
