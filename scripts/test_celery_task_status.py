#!/usr/bin/env python3
"""Prove that a running syncq deployment works, from the outside: task submission, status,
cancel, recovery and performance, over HTTP (and Redis itself for the memory check).

Runs, in order, and reports every item as passed, failed or skipped, with the reason:

  1. Health       GET /health, and the worker round-trip GET /api/tasks/health-check
  2. Submit       POST /api/data-sync/sync-single-file; records the task id
  3. Status       polls /api/data-sync/task-status/{id} to a final state, showing progress
  4. Cancel       submits another sync and cancels it at once: REVOKED, and it stays so
  5. Recovery     a long sync; the worker restarted under it (--restart-worker-cmd); the
                  task still finishes, with every row synced once
  6. Performance  submit latency p50/p95/p99, N concurrent tasks all finished (none lost),
                  Redis memory (INFO memory; needs --redis-url or REDIS_URL)
  7. Degraded     only with --allow-redis-stop-cmd: once the queues are idle, Redis is
                  stopped and a submission runs on the API's local executor; Redis started
                  again (--redis-start-cmd), a worker answers and Celery takes over

Progress goes to stderr while it runs; the report (tables, or one JSON document with
--json) goes to stdout. Every wait has a timeout, so it never hangs.
Exit status: 0 when nothing failed, 1 when something failed, 2 for a usage error.

Side effects on the deployment: unless --file-id or --upload is given, generated CSV files
(columns id,name,value) are registered in new datasets named status-check-<run id>[-…],
and synced; the performance step submits system.noop tasks (or syncs, --perf-task sync).
"""

from __future__ import annotations

import sys

from task_status_check.cli import parse_args
from task_status_check.runner import run_and_report

# The steps live in scripts/task_status_check/ (one module per group above); this file is
# the entry point operators and tests run by path, which puts scripts/ on sys.path.


def main(argv: list[str] | None = None) -> int:
    return run_and_report(parse_args(argv, description=__doc__))


if __name__ == "__main__":
    sys.exit(main())
