"""syncq against the plain pattern it replaces, in one run, with wrk as the load generator.

Starts syncq's bench stack (its own redis-server, database, API, one worker of concurrency
2) and, beside it, the plain pattern (benchmarks/plain_pattern: an ``async def`` route
calling ``.delay()``, a Celery task storing with a sync SQLAlchemy session, status from
``AsyncResult``) on the same Redis server (DB 1) and the same kind of database. Then, each
phase after the queues of the one before have drained:

  * no-op end to end: ``POST /api/tasks {"name": "system.noop"}`` to SUCCESS against raw
    Celery ``.delay()`` of a bare task on the same worker, twice: ``--tasks`` submitted by
    10 httpx clients in this process (benchmarks/bench_submit.py), and ``--seconds`` of
    wrk at 10 connections (the Python client takes a core of its own; wrk does not),
    against as many raw ``.delay()`` calls as wrk's run finished;
  * for 1, 10 and 100 connections, ``--seconds`` of ``POST
    /api/conversations/<c>-<n>/messages`` over 50 session ids while the worker drains:
    submits/s, latency p50 / p99 / max, non-2xx; then rows stored / (last row stored -
    load start), counting every row stored until the queues drain;
  * for 10 and 100 connections, ``--seconds`` of ``GET /api/tasks/<id>`` of one finished
    task: polls/s and latency p50 / p99.

    .venv/bin/python -m benchmarks.bench_against_plain --db sqlite|postgresql [--seconds 10]

Needs ``wrk`` (apt-get install -y wrk) and, for PostgreSQL, psycopg2; exits 2 without them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis
from sqlalchemy import Engine, and_, create_engine, func, select

import backend
from backend.constants import TaskName
from backend.db.models import ConversationMessage, TaskRun
from benchmarks.bench_submit import end_to_end, raw_celery
from benchmarks.plain_pattern.db import Message
from benchmarks.plain_stack import plain_stack, require_psycopg2, sync_url
from benchmarks.stack import bench_stack, describe
from benchmarks.wrk import WrkResult, require_wrk, run_wrk
from tests.support import TOKEN, wait_for

SESSIONS = 50
Stored = Callable[[str, datetime], tuple[int, datetime | None]]


@dataclass
class Side:
    name: str
    base_url: str
    redis_url: str
    stored: Stored
    finished_task: str = ""
    submits: dict[int, WrkResult] = field(default_factory=dict)
    stored_rows: dict[int, int] = field(default_factory=dict)
    stored_rate: dict[int, float] = field(default_factory=dict)
    polls: dict[int, WrkResult] = field(default_factory=dict)
    noop_rate: float = 0.0
    noop_wrk_rate: float = 0.0
    noop_wrk_tasks: int = 0


def syncq_stored(engine: Engine) -> Stored:
    """Rows in conversation_messages; stored time from the save tasks' ledger finished_at
    (the row's own created_at is when the API received the message)."""

    def stored(prefix: str, start: datetime) -> tuple[int, datetime | None]:
        with engine.connect() as conn:
            rows = conn.scalar(
                select(func.count())
                .select_from(ConversationMessage)
                .where(ConversationMessage.session_id.like(f"{prefix}-%"))
            )
            last = conn.scalar(
                select(func.max(TaskRun.finished_at)).where(
                    TaskRun.name == TaskName.SAVE_CONVERSATION, TaskRun.submitted_at >= start
                )
            )
        return int(rows or 0), last

    return stored


def plain_stored(engine: Engine) -> Stored:
    def stored(prefix: str, start: datetime) -> tuple[int, datetime | None]:
        mine = Message.session_id.like(f"{prefix}-%")
        with engine.connect() as conn:
            rows = conn.scalar(select(func.count()).select_from(Message).where(mine))
            last = conn.scalar(select(func.max(Message.created_at)).where(mine))
        if last is not None and last.tzinfo is None:  # SQLite keeps naive UTC text
            last = last.replace(tzinfo=UTC)
        return int(rows or 0), last

    return stored


def wait_drained(redis_url: str, timeout: float) -> None:
    """Until every list (queue) in this Redis DB is empty and nothing is unacked, 1 s long."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    streak = 0

    def settled() -> bool:
        nonlocal streak
        queued = sum(int(client.llen(key)) for key in client.scan_iter(_type="list"))
        busy = queued + int(client.hlen("unacked"))
        streak = streak + 1 if busy == 0 else 0
        return streak >= 5

    wait_for(settled, timeout, interval=0.2, what=f"queues of {redis_url} to drain")
    client.close()


def warm_up(side: Side) -> None:
    """One save end to end; its task is the finished one the status polls read."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=side.base_url, headers=headers, timeout=10) as client:
        r = client.post(
            "/api/conversations/warm-up/messages", json={"role": "user", "content": "hi"}
        )
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        wait_for(
            lambda: client.get(f"/api/tasks/{task_id}").json()["state"] == "SUCCESS",
            60,
            what=f"{side.name} warm-up task {task_id}",
        )
    side.finished_task = task_id


def submit_phase(side: Side, connections: int, seconds: float, drain_timeout: float) -> None:
    prefix = f"c{connections}"
    start = datetime.now(UTC)
    result = run_wrk(f"{side.base_url}/", connections, seconds, [TOKEN, "post", prefix, "50"])
    wait_drained(side.redis_url, drain_timeout)
    rows, last = side.stored(prefix, start)
    side.submits[connections] = result
    side.stored_rows[connections] = rows
    side.stored_rate[connections] = rows / (last - start).total_seconds() if last else 0.0
    print(
        f"  {side.name:<6} {connections:>3} conn: {result.rate:7.1f} submits/s, "
        f"{rows} rows stored, {side.stored_rate[connections]:6.1f} stored/s",
        flush=True,
    )


def noop_wrk_phase(side: Side, engine: Engine, seconds: float, drain_timeout: float) -> None:
    """wrk at 10 connections submitting no-ops; the rate is tasks finished / (last finished
    - start), from the ledger's own times."""
    start = datetime.now(UTC)
    run_wrk(f"{side.base_url}/", 10, seconds, [TOKEN, "noop"])
    wait_drained(side.redis_url, drain_timeout)
    mine = and_(TaskRun.name == TaskName.NOOP, TaskRun.submitted_at >= start)
    with engine.connect() as conn:
        done = conn.scalar(select(func.count()).select_from(TaskRun).where(mine))
        last = conn.scalar(select(func.max(TaskRun.finished_at)).where(mine))
    side.noop_wrk_tasks = int(done or 0)
    side.noop_wrk_rate = side.noop_wrk_tasks / (last - start).total_seconds() if last else 0.0


def poll_phase(side: Side, connections: int, seconds: float) -> None:
    url = f"{side.base_url}/api/tasks/{side.finished_task}"
    side.polls[connections] = result = run_wrk(url, connections, seconds, [TOKEN, "get"])
    print(f"  {side.name:<6} {connections:>3} conn: {result.rate:7.1f} polls/s", flush=True)


def table(title: str, rows: list[tuple[str, float, float]], digits: int = 1) -> None:
    print(f"\n{title}\n\n| | syncq | plain | syncq / plain |\n|---|---|---|---|")
    for label, ours, theirs in rows:
        ratio = f"{ours / theirs:.2f}" if theirs else "—"
        print(f"| {label} | {ours:.{digits}f} | {theirs:.{digits}f} | {ratio} |")


def report(ours: Side, plain: Side, tasks: int) -> None:
    def per(
        metric: Callable[[Side, int], float], levels: list[int], unit: str
    ) -> list[tuple[str, float, float]]:
        return [(f"{c} {unit}", metric(ours, c), metric(plain, c)) for c in levels]

    conns, polls = sorted(ours.submits), sorted(ours.polls)
    table("Submits/s", per(lambda s, c: s.submits[c].rate, conns, "conn"))
    table("Submit p50 ms", per(lambda s, c: s.submits[c].p50_ms, conns, "conn"), 2)
    table("Submit p99 ms", per(lambda s, c: s.submits[c].p99_ms, conns, "conn"), 2)
    table("Submit max ms", per(lambda s, c: s.submits[c].max_ms, conns, "conn"), 2)
    errors = per(lambda s, c: s.submits[c].non2xx + s.submits[c].socket_errors, conns, "conn")
    table("Submit non-2xx + socket errors", errors, 0)
    table("Rows stored", per(lambda s, c: s.stored_rows[c], conns, "conn"), 0)
    table("End to end stored/s", per(lambda s, c: s.stored_rate[c], conns, "conn"))
    table("Status polls/s (one finished task)", per(lambda s, c: s.polls[c].rate, polls, "conn"))
    table("Status poll p50 ms", per(lambda s, c: s.polls[c].p50_ms, polls, "conn"), 2)
    table("Status poll p99 ms", per(lambda s, c: s.polls[c].p99_ms, polls, "conn"), 2)
    table(
        f"No-op end to end, {tasks} tasks (plain: raw Celery .delay() on the same worker), tasks/s",
        [("10 clients / .delay() loop", ours.noop_rate, plain.noop_rate)],
    )
    table(
        f"No-op end to end, wrk 10 connections ({ours.noop_wrk_tasks} tasks; plain: as many "
        "raw Celery .delay()), tasks/s",
        [("wrk 10 conn / .delay() loop", ours.noop_wrk_rate, plain.noop_wrk_rate)],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--seconds", type=float, default=10, help="load time of each phase")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--poll-connections", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--tasks", type=int, default=500, help="no-op end-to-end tasks")
    parser.add_argument("--drain-timeout", type=float, default=600, help="seconds per phase")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    require_wrk()
    if args.db == "postgresql":
        require_psycopg2()

    started = datetime.now(UTC)
    with bench_stack(args.db, include="benchmarks.raw_tasks") as st, plain_stack(st) as pl:
        print(describe(st, "syncq against the plain pattern (wrk)"))
        print(f"# backend imported from {Path(backend.__file__).parent}", flush=True)
        syncq_engine = create_engine(sync_url(st.env["DATABASE_URL"]))
        ours = Side("syncq", st.api.base_url, st.redis.url, syncq_stored(syncq_engine))
        plain = Side("plain", pl.api.base_url, pl.redis_url, plain_stored(pl.engine))
        sides = (ours, plain)
        for side in sides:
            warm_up(side)
        print("no-op end to end …", flush=True)
        ours.noop_rate = asyncio.run(end_to_end(st.api.base_url, args.tasks))
        wait_drained(st.redis.url, args.drain_timeout)
        plain.noop_rate = raw_celery(st.redis.url, args.tasks)
        noop_wrk_phase(ours, syncq_engine, args.seconds, args.drain_timeout)
        plain.noop_wrk_tasks = ours.noop_wrk_tasks
        plain.noop_wrk_rate = raw_celery(st.redis.url, ours.noop_wrk_tasks)
        print(
            f"  no-op: {ours.noop_rate:.1f} / {plain.noop_rate:.1f} tasks/s (httpx clients), "
            f"{ours.noop_wrk_rate:.1f} / {plain.noop_wrk_rate:.1f} (wrk, "
            f"{ours.noop_wrk_tasks} tasks)",
            flush=True,
        )
        print("submits …", flush=True)
        for connections in args.connections:
            for side in sides:
                submit_phase(side, connections, args.seconds, args.drain_timeout)
        print("status polls …", flush=True)
        for connections in args.poll_connections:
            for side in sides:
                poll_phase(side, connections, args.seconds)
        syncq_engine.dispose()
    report(ours, plain, args.tasks)
    elapsed = (datetime.now(UTC) - started).total_seconds()
    print(f"\nwhole run: {elapsed:.0f} s")
    if args.json:
        figures = {s.name: asdict(s) | {"stored": None} for s in sides}
        args.json.write_text(json.dumps({"db": args.db, "figures": figures}, indent=1))


if __name__ == "__main__":
    main()
