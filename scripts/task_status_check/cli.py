"""The command line. Checked here, before anything runs, so that a mistake costs a usage
error (exit 2) rather than a half-run check against a live deployment."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from . import local_stack

MAX_CONCURRENCY = 1000  # one thread (and connection) per task submitted at once


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text}")
    return value


def levels(text: str) -> list[int]:
    try:
        found = [positive_int(part.strip()) for part in text.split(",") if part.strip()]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"comma-separated counts, e.g. 10,100 ({exc})") from None
    if any(n > MAX_CONCURRENCY for n in found):
        raise argparse.ArgumentTypeError(f"at most {MAX_CONCURRENCY} tasks at once")
    return found


EPILOG = """\
examples:
  API_TOKEN=$(cat data/api_token) %(prog)s --base-url http://127.0.0.1:8000
  API_TOKEN=$(cat data/api_token) %(prog)s \\
      --redis-url "redis://:$(cat data/redis_password)@127.0.0.1:6379/0"   # the launcher's Redis
  %(prog)s --token T --redis-url redis://127.0.0.1:6379/0 \\
      --restart-worker-cmd 'systemctl restart syncq-worker' \\
      --allow-redis-stop-cmd 'redis-cli -p 6379 shutdown nosave' \\
      --redis-start-cmd 'systemctl start redis' --json > report.json

commands (--restart-worker-cmd, --allow-redis-stop-cmd, --redis-start-cmd) run through
the shell with a timeout (--cmd-timeout); they must return once their work is done (start
long-running processes in the background or through your service manager).
"""


def parse_args(argv: list[str] | None, description: str | None) -> argparse.Namespace:
    """``description`` is the script's docstring, so --help shows what the script says."""
    parser = argparse.ArgumentParser(
        prog="test_celery_task_status.py",
        description=description,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_argument_group("the deployment")
    target.add_argument(
        "--base-url", default="http://127.0.0.1:8000", help="the API (default: %(default)s)"
    )
    target.add_argument(
        "--token", default=os.environ.get("API_TOKEN"), help="bearer token (default: $API_TOKEN)"
    )
    target.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="the deployment's Redis, for the memory check (default: $REDIS_URL; skipped without)",
    )
    files = parser.add_argument_group("the file to sync (default: a generated CSV)")
    which = files.add_mutually_exclusive_group()
    which.add_argument("--file-id", type=positive_int, help="sync this registered file")
    which.add_argument(
        "--upload",
        type=Path,
        metavar="FILE",
        help="register FILE (CSV, JSON Lines, XLSX) and sync it",
    )
    files.add_argument("--dataset", help="dataset for --upload (default: status-check-<run id>)")
    files.add_argument(
        "--key-columns", default="id", help="key columns for --upload (default: %(default)s)"
    )
    files.add_argument(
        "--rows",
        type=positive_int,
        default=1000,
        help="rows of the generated file (default: %(default)s)",
    )
    faults = parser.add_argument_group("recovery and degraded mode")
    faults.add_argument(
        "--restart-worker-cmd",
        metavar="CMD",
        help="shell command that restarts (or kills -9 and starts) the Celery worker; step 5 "
        "is skipped without it",
    )
    faults.add_argument(
        "--recovery-rows",
        type=positive_int,
        default=1_000_000,
        help="rows of the long sync restarted under; it must still be running when the "
        "restart begins (default: %(default)s, about 20 s at batches of 5000)",
    )
    faults.add_argument(
        "--recovery-timeout",
        type=positive_float,
        default=300.0,
        help="seconds for the long sync to finish after the restart; recovery first waits "
        "for the task's lease (LEASE_SECONDS) to expire (default: %(default)s)",
    )
    faults.add_argument(
        "--allow-redis-stop-cmd",
        metavar="CMD",
        help="shell command that stops the deployment's Redis; enables step 7 (degraded "
        "mode), which needs --redis-start-cmd too",
    )
    faults.add_argument(
        "--redis-start-cmd",
        metavar="CMD",
        help="shell command that starts that Redis again; always run after the stop command, "
        "whatever happened in between",
    )
    perf = parser.add_argument_group("performance")
    perf.add_argument("--perf-task", choices=["noop", "sync"], default="noop",
                      help="what to submit: system.noop through POST /api/tasks (the bare submit "
                      "path) or syncs of the file (default: %(default)s)")  # fmt: skip
    perf.add_argument(
        "--latency-samples",
        type=positive_int,
        default=100,
        help="sequential submissions timed (default: %(default)s)",
    )
    perf.add_argument(
        "--latency-target-ms",
        type=positive_float,
        default=100.0,
        help="the bar for p50/p95/p99 (default: %(default)s)",
    )
    perf.add_argument(
        "--concurrency-levels",
        type=levels,
        default=[10, 100],
        metavar="N,N",
        help="tasks submitted at once, per run (default: 10,100)",
    )
    perf.add_argument(
        "--concurrency-timeout",
        type=positive_float,
        default=300.0,
        help="seconds for a concurrent run to finish (default: %(default)s)",
    )
    perf.add_argument(
        "--redis-memory-target-mb",
        type=positive_float,
        default=1024.0,
        help="the bar for used_memory (default: %(default)s)",
    )
    timing = parser.add_argument_group("timeouts")
    timing.add_argument(
        "--task-timeout",
        type=positive_float,
        default=120.0,
        help="seconds for a task to finish (default: %(default)s)",
    )
    timing.add_argument(
        "--cancel-settle",
        type=positive_float,
        default=3.0,
        help="seconds a cancelled task must stay REVOKED (default: %(default)s)",
    )
    timing.add_argument(
        "--http-timeout",
        type=positive_float,
        default=30.0,
        help="seconds per HTTP request (default: %(default)s)",
    )
    timing.add_argument(
        "--cmd-timeout",
        type=positive_float,
        default=120.0,
        help="seconds per shell command (default: %(default)s)",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print the report as one JSON document")
    output.add_argument(
        "--json-out", type=Path, metavar="FILE", help="also write the JSON report to FILE"
    )
    output.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    args.base_url = args.base_url.rstrip("/")
    args.token, args.redis_url, notes = local_stack.fill_in(args.token, args.redis_url)
    if not args.quiet:
        for note in notes:
            print(note, file=sys.stderr)
    if not args.token:
        parser.error(
            "no token: pass --token or set API_TOKEN "
            "(./scripts/start.sh writes one to data/api_token, read when it is there)"
        )
    if args.allow_redis_stop_cmd and not args.redis_start_cmd:
        parser.error("--allow-redis-stop-cmd needs --redis-start-cmd, to start Redis again")
    if args.upload is not None and not args.upload.is_file():
        parser.error(f"--upload: no such file: {args.upload}")
    if not args.concurrency_levels:
        parser.error("--concurrency-levels: give at least one count")
    if urlsplit(args.base_url).scheme not in ("http", "https"):
        parser.error(f"--base-url must be an http(s) URL: {args.base_url}")
    return args
