"""7. Degraded mode: with Redis stopped (by the operator's command, and only when asked, as
it takes the deployment's broker away) a submission must still run, on the API's local
executor; with Redis started again, a worker must answer and Celery take over. Redis is
always started again, whatever happened in between."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import httpx

from .common import POLL_INTERVAL, REDIS_HINT, WORKER_HINT, Fail, Skip, error_text
from .context import Context
from .report import Group

HEALTH_WAIT = 30.0  # for /health to notice the broker going down or coming back
IDLE_WAIT = 30.0  # for in-flight messages to drain before Redis is stopped
ALL = ("Redis stopped and started again", "local executor, then Celery")


def step(ctx: Context) -> None:
    group = ctx.group(7, "Degraded mode")
    if not ctx.args.allow_redis_stop_cmd:
        reason = "not requested: pass --allow-redis-stop-cmd and --redis-start-cmd"
        ctx.skip(group, *ALL, reason)
        return
    if ctx.not_ready:
        ctx.skip(group, *ALL, f"not run: {ctx.not_ready}")
        return
    local: dict[str, Any] = {}
    try:

        def stop() -> str:
            # Work in flight when Redis goes away is a different fault (see the recovery
            # step); let it drain so this step checks the fallback itself.
            idle = wait_idle(ctx, IDLE_WAIT)
            ctx.say(f"   {idle}")
            done = ctx.run_command(ctx.args.allow_redis_stop_cmd, "the Redis stop command")
            return f"{done}; {idle}"

        if not ctx.check(group, "stop Redis (command)", "exit 0", stop):
            return

        def sees_down() -> str:
            found, waited = wait_health(ctx, lambda h: h.get("broker") == "down", HEALTH_WAIT)
            if found is None:
                raise Fail(
                    f"/health still says the broker is up after {HEALTH_WAIT:g} s; did the "
                    "command stop the Redis the API uses?",
                    "broker up",
                )
            return f"broker down, executor {found.get('executor')} after {waited:.1f} s"

        ctx.check(group, "API notices Redis is down", "broker down in /health", sees_down)

        def submit_down() -> str:
            task_id, ms, executor = submit(ctx)
            local["id"] = task_id
            text = f"task {task_id} on {executor} in {ms:.0f} ms"
            if executor != "local":
                raise Fail(f"executor {executor!r}, expected 'local'", text)
            return text

        ctx.check(group, "submit with Redis down", '202, executor "local"', submit_down)

        def runs_locally() -> str:
            if "id" not in local:
                raise Skip("nothing was submitted")
            waited = ctx.api.wait_task(
                local["id"], ctx.args.task_timeout, f"local task {local['id'][:8]}"
            )
            status = waited.status or {}
            text = f"{waited.state} on {status.get('executor')} in {waited.elapsed:.1f} s"
            if waited.timed_out:
                raise Fail(f"not finished after {ctx.args.task_timeout:g} s", text)
            if waited.state != "SUCCESS" or status.get("executor") != "local":
                raise Fail(f"expected SUCCESS on the local executor: {error_text(status)}", text)
            return text

        ctx.check(group, "runs on the local executor", "SUCCESS, executor local", runs_locally)
    finally:
        restart_redis(ctx, group)


def submit(ctx: Context) -> tuple[str, float, str]:
    """A sync of the step-2 file when there is one (the real workload), else a no-op."""
    if ctx.file_id is not None:
        body, ms = ctx.api.submit_sync(ctx.file_id)
        return str(body["task_id"]), ms, str(body["executor"])
    started = time.perf_counter()
    body = ctx.api.expect(ctx.api.http.post("/api/tasks", json={"name": "system.noop"}), 202)
    return str(body["task_id"]), (time.perf_counter() - started) * 1000, str(body["executor"])


def restart_redis(ctx: Context, group: Group) -> None:
    if not ctx.check(
        group,
        "start Redis again (command)",
        "exit 0",
        lambda: ctx.run_command(ctx.args.redis_start_cmd, "the Redis start command"),
    ):
        return

    def sees_up() -> str:
        found, waited = wait_health(ctx, lambda h: h.get("broker") == "up", HEALTH_WAIT * 2)
        if found is None:
            raise Fail(
                f"/health still says the broker is down after {HEALTH_WAIT * 2:g} s; {REDIS_HINT}",
                "broker down",
            )
        return f"broker up, executor {found.get('executor')} after {waited:.1f} s"

    if not ctx.check(group, "API notices Redis is back", "broker up in /health", sees_up):
        return
    ctx.check(
        group,
        "worker answers again",
        "200 within 5 s",
        lambda: ctx.api.worker_answers(
            "did the worker survive losing Redis? look for 'Unrecoverable error' in its "
            f"log; {WORKER_HINT}"
        ),
    )

    def celery_again() -> str:
        task_id, _, executor = submit(ctx)
        if executor != "celery":
            raise Fail(
                f"a new task went to {executor!r}, not Celery", f"task {task_id} on {executor}"
            )
        waited = ctx.api.wait_task(task_id, ctx.args.task_timeout, f"task {task_id[:8]}")
        status = waited.status or {}
        text = f"{waited.state} on {status.get('executor')} in {waited.elapsed:.1f} s"
        if waited.timed_out:
            raise Fail(
                f"not finished after {ctx.args.task_timeout:g} s; did the worker "
                "reconnect to Redis?",
                text,
            )
        if waited.state != "SUCCESS" or status.get("executor") != "celery":
            raise Fail(f"expected SUCCESS on Celery: {error_text(status)}", text)
        return text

    ctx.check(group, "Celery takes over again", "SUCCESS, executor celery", celery_again)


def wait_health(
    ctx: Context, predicate: Callable[[dict[str, Any]], bool], timeout: float
) -> tuple[dict[str, Any] | None, float]:
    """Poll /health until ``predicate`` holds: the API notices the broker going or coming
    back on its own schedule, so there is no one moment at which to ask."""
    started = time.monotonic()
    last: dict[str, Any] | None = None
    while time.monotonic() - started < timeout:
        with contextlib.suppress(httpx.TransportError, ValueError):
            last = ctx.api.http.get("/health").json()
            if last is not None and predicate(last):
                return last, time.monotonic() - started
        time.sleep(POLL_INTERVAL)
    return None, time.monotonic() - started


def wait_idle(ctx: Context, timeout: float) -> str:
    """Wait until nothing is queued and the count of delivered-but-unacknowledged
    messages has held still for a second (GET /api/system/queues): a worker killed
    earlier leaves its message there until the visibility timeout, so that count
    need not reach zero. Never fails: a busy deployment only makes the fault that
    follows less clean."""
    started = time.monotonic()
    seen: tuple[int, int] | None = None
    since = started
    while time.monotonic() - started < timeout:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = ctx.api.http.get("/api/system/queues")
            if response.status_code != 200:
                return f"queues not readable (HTTP {response.status_code})"
            body = response.json()
            now = (
                sum(int(n) for n in (body.get("queues") or {}).values()),
                int(body.get("unacked") or 0),
            )
            if now != seen:
                seen, since = now, time.monotonic()
            elif now[0] == 0 and time.monotonic() - since >= 1.0:
                return f"queues idle after {time.monotonic() - started:.1f} s"
        time.sleep(POLL_INTERVAL)
    busy = f"{seen[0]} queued, {seen[1]} unacknowledged" if seen else "unknown"
    return f"still busy after {timeout:g} s ({busy})"
