"""Every Prometheus metric syncq exports, defined once, and how ``GET /metrics`` renders them.

Counters and histograms are updated where things happen (a submit, a task's outcome, a
recovery sweep, a committed sync batch): one increment each, never a database query.
Gauges of things that exist outside any one process (queue depths in Redis, the broker's
health) are read when Prometheus scrapes, from ``Runtime.queue_view()``.

Several processes: with ``PROMETHEUS_MULTIPROC_DIR`` in the environment (prometheus-client
reads it when it is imported, so a ``.env`` file is too late for it), every process (each
uvicorn worker, each Celery prefork child, the local executor's API process) writes its
values to files in that directory, and ``render`` adds them all up, so the API on the same
machine shows the workers' tasks too. The launcher sets it up (scripts/start_celery_services.py);
a worker on another machine serves its own on ``WORKER_METRICS_PORT``. See the README.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from backend.config import Settings

log = logging.getLogger(__name__)

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST

TASK_LABELS = ("name", "queue", "executor")
# Seconds: from a 5 ms save to a long sync (the soft time limit is 300 s by default).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

TASKS_SUBMITTED = Counter(
    "syncq_tasks_submitted",
    "Tasks accepted into the ledger, by the executor they were first handed to",
    TASK_LABELS,
)
TASKS_FINISHED = Counter(
    "syncq_tasks_finished",
    "Tasks that ended, by final state (SUCCESS, FAILURE, REVOKED)",
    (*TASK_LABELS, "state"),
)
TASK_RETRIES = Counter(
    "syncq_task_retries", "Runs that hit a transient error and were scheduled again", TASK_LABELS
)
TASK_DURATION = Histogram(
    "syncq_task_duration_seconds",
    "From a task's first start to its end (SUCCESS or FAILURE), retries included",
    TASK_LABELS,
    buckets=DURATION_BUCKETS,
)
TASK_QUEUE_WAIT = Histogram(
    "syncq_task_queue_wait_seconds",
    "From submission to a task's first start, for tasks that ended SUCCESS or FAILURE",
    TASK_LABELS,
    buckets=WAIT_BUCKETS,
)
RECOVERY_SWEEPS = Counter("syncq_recovery_sweeps", "Recovery sweeps run (API timer, workers, beat)")
RECOVERY_REDISPATCHED = Counter(
    "syncq_recovery_redispatched", "Tasks the recovery sweep dispatched again"
)
RECOVERY_GAVE_UP = Counter(
    "syncq_recovery_gave_up", "Tasks the recovery sweep failed after MAX_ATTEMPTS lost runners"
)
BROKER_DATA_LOST = Counter(
    "syncq_broker_data_lost", "Times a sweep found Redis had come back empty"
)
SYNC_ROWS = Counter(
    "syncq_sync_rows",
    "Rows of files synced, in committed batches: read, inserted, updated, unchanged, rejected",
    ("result",),
)
LOCAL_HELD = Gauge(
    "syncq_local_executor_held",
    "Tasks the API's local executor holds (queued, running or waiting for a retry)",
    multiprocess_mode="livesum",
)
LOCAL_CAPACITY = Gauge(
    "syncq_local_executor_capacity",
    "How many tasks the API's local executors may hold (LOCAL_QUEUE_SIZE per API process)",
    multiprocess_mode="livesum",
)

SYNC_ROW_RESULTS = ("read", "inserted", "updated", "unchanged", "rejected")


def task_finished(
    name: str, queue: str, executor: str, state: str, *, ran: float | None, waited: float | None
) -> None:
    """One task ended: its count, and (when known) how long it ran and waited."""
    TASKS_FINISHED.labels(name, queue, executor, state).inc()
    if ran is not None:
        TASK_DURATION.labels(name, queue, executor).observe(max(0.0, ran))
    if waited is not None:
        TASK_QUEUE_WAIT.labels(name, queue, executor).observe(max(0.0, waited))


def rows_synced(counts: Mapping[str, int]) -> None:
    for result in SYNC_ROW_RESULTS:
        n = counts.get(result, 0)
        if n:
            SYNC_ROWS.labels(result).inc(n)


@dataclass(frozen=True)
class LiveValues:
    """What is read at scrape time (from ``Runtime.queue_view()``)."""

    broker_up: bool
    queues: Mapping[str, int]
    unacked: int | None
    local_held: int
    local_capacity: int


class _Live(Collector):
    def __init__(self, values: LiveValues) -> None:
        self.values = values

    def collect(self) -> Iterator[GaugeMetricFamily]:
        v = self.values
        yield GaugeMetricFamily("syncq_broker_up", "1 when Redis answers, else 0", v.broker_up)
        depth = GaugeMetricFamily(
            "syncq_queue_depth", "Messages waiting in each Celery queue", labels=["queue"]
        )
        for queue, n in sorted(v.queues.items()):
            depth.add_metric([queue], n)
        yield depth
        if v.unacked is not None:
            yield GaugeMetricFamily(
                "syncq_queue_unacked", "Messages taken by a worker, not yet acknowledged", v.unacked
            )


def multiprocess_dir(settings: Settings) -> str | None:
    return settings.prometheus_multiproc_dir or None


def render(settings: Settings, values: LiveValues) -> bytes:
    """The exposition text: every process's metrics (this one's alone without a
    multiprocess directory), then the gauges read now."""
    set_local_fill(values.local_held, values.local_capacity)
    if multiprocess_dir(settings):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        stored = generate_latest(registry)
    else:
        stored = generate_latest(REGISTRY)
    live = CollectorRegistry(auto_describe=False)
    live.register(_Live(values))
    return stored + generate_latest(live)


def set_local_fill(held: int, capacity: int) -> None:
    LOCAL_HELD.set(held)
    LOCAL_CAPACITY.set(capacity)


def process_exiting(settings: Settings) -> None:
    """This process ends: its live gauges stop counting (its counters stay in the sums)."""
    directory = multiprocess_dir(settings)
    if directory:
        try:
            multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]
        except OSError:
            log.debug("could not mark metrics of %s dead", os.getpid(), exc_info=True)


def serve_worker_metrics(settings: Settings, *, prefork: bool) -> None:
    """A worker's own /metrics on ``WORKER_METRICS_PORT`` (for a worker that shares no
    directory with an API): its processes' files summed, or this process's registry."""
    port = settings.worker_metrics_port
    if port is None:
        return
    if multiprocess_dir(settings):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
        if prefork:
            log.warning(
                "WORKER_METRICS_PORT without PROMETHEUS_MULTIPROC_DIR: a prefork worker's "
                "children count their tasks where this port cannot see them; set both"
            )
    start_http_server(port, addr=settings.worker_metrics_address, registry=registry)
    log.info("worker metrics on http://%s:%d/metrics", settings.worker_metrics_address, port)
