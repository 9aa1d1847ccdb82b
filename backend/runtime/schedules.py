"""The RedBeat schedule as the API shows it: each entry's task, interval, last and next run.

The definitions come from the Celery app's ``beat_schedule``; last-run times from the
entries RedBeat keeps in Redis (``redbeat:<name>``), which exist once a beat has run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from redbeat.schedulers import RedBeatSchedulerEntry, ensure_conf


class UnknownSchedule(LookupError):
    pass


@dataclass(frozen=True)
class ScheduleEntry:
    name: str
    task: str
    every_seconds: float
    last_run: datetime | None
    next_run: datetime | None
    enabled: bool


def definition(app: Celery, name: str) -> dict[str, Any]:
    try:
        entry: dict[str, Any] = app.conf.beat_schedule[name]
    except KeyError:
        raise UnknownSchedule(name) from None
    return entry


def read_entries(app: Celery, *, redis_up: bool) -> list[ScheduleEntry]:
    """Blocking (RedBeat's client is synchronous): call it from a thread."""
    ensure_conf(app)
    out = []
    for name, conf in app.conf.beat_schedule.items():
        stored: Any = None
        if redis_up:
            try:
                stored = RedBeatSchedulerEntry.from_key(
                    RedBeatSchedulerEntry.generate_key(app, name), app=app
                )
            except KeyError:
                stored = None  # no beat has run this entry yet
        every = (
            stored.schedule.run_every.total_seconds()
            if stored is not None and hasattr(stored.schedule, "run_every")
            else conf["schedule"].total_seconds()
        )
        last_run = stored.last_run_at if stored is not None else None
        out.append(
            ScheduleEntry(
                name=name,
                task=conf["task"],
                every_seconds=every,
                last_run=last_run,
                # RedBeat's own due_at subtracts the time already elapsed twice.
                next_run=last_run + timedelta(seconds=every) if last_run else None,
                enabled=stored.enabled if stored is not None else True,
            )
        )
    return out
