"""6. Performance: how long a submission takes (p50/p95/p99 of sequential ones), whether
N tasks submitted at once all finish (none lost under load), and Redis's memory, read from
Redis itself since the API does not report it."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import redis

from .common import FINAL, REDIS_PASSWORD_HINT, Fail, Skip, megabytes, percentile, redact
from .context import Context
from .report import FAILED, Group, Item


def step(ctx: Context) -> None:
    group = ctx.group(6, "Performance")
    args = ctx.args
    target_ms = args.latency_target_ms
    endpoint = (
        "POST /api/tasks system.noop"
        if args.perf_task == "noop"
        else "POST /api/data-sync/sync-single-file"
    )
    if ctx.not_ready:
        for p in (50, 95, 99):
            ctx.skip(
                group, f"submit latency p{p}", f"< {target_ms:g} ms", f"not run: {ctx.not_ready}"
            )
        for n in args.concurrency_levels:
            ctx.skip(
                group,
                f"{n} concurrent tasks",
                "all SUCCESS, none lost",
                f"not run: {ctx.not_ready}",
            )
    else:
        latency(ctx, group, endpoint, target_ms)
        for n in args.concurrency_levels:
            ctx.check(
                group,
                f"{n} concurrent tasks",
                "all SUCCESS, none lost",
                functools.partial(concurrent, ctx, n),
            )
    ctx.check(
        group,
        "Redis memory (INFO memory)",
        f"< {args.redis_memory_target_mb:g} MB",
        functools.partial(redis_memory, ctx),
    )


def submit(ctx: Context, client: httpx.Client | None = None) -> tuple[str, float, str]:
    """One submission of the performance task: (task id, latency in ms, executor)."""
    if ctx.args.perf_task == "sync":
        if ctx.file_id is None:
            raise Fail("no file to sync (the submit step failed)")
        body, ms = ctx.api.submit_sync(ctx.file_id, client)
        return str(body["task_id"]), ms, str(body["executor"])
    started = time.perf_counter()
    response = (client or ctx.api.http).post("/api/tasks", json={"name": "system.noop"})
    ms = (time.perf_counter() - started) * 1000
    body = ctx.api.expect(response, 202)
    return str(body["task_id"]), ms, str(body["executor"])


def latency(ctx: Context, group: Group, endpoint: str, target_ms: float) -> None:
    samples: list[float] = []
    task_ids: list[str] = []
    n = ctx.args.latency_samples
    ctx.say(f"   measuring {n} sequential submissions ({endpoint})")
    try:
        for _ in range(n):
            task_id, ms, _executor = submit(ctx)
            samples.append(ms)
            task_ids.append(task_id)
    except (Fail, httpx.HTTPError) as exc:
        # The three percentiles share one failure: there are no samples to judge.
        reason = exc.reason if isinstance(exc, Fail) else ctx.api.http_reason(exc)
        for p in (50, 95, 99):
            group.items.append(
                Item(
                    f"submit latency p{p}",
                    FAILED,
                    f"{len(samples)}/{n} submitted",
                    f"< {target_ms:g} ms",
                    reason,
                )
            )
        ctx.say(f"   submit latency: FAILED ({reason})")
        return
    for p in (50, 95, 99):
        value = percentile(samples, p)

        def measured(value: float = value, p: int = p) -> str:
            text = f"{value:.1f} ms (n={n}, {endpoint})"
            if value >= target_ms:
                raise Fail(f"p{p} is over the {target_ms:g} ms bar", text)
            return text

        ctx.check(group, f"submit latency p{p}", f"< {target_ms:g} ms", measured)
    # Let those tasks drain, so they neither count in nor slow the concurrency runs.
    ctx.check(
        group,
        f"the {n} latency tasks finished",
        "all SUCCESS, none lost",
        lambda: finish_all(ctx, task_ids, time.monotonic(), None),
    )


def concurrent(ctx: Context, n: int) -> str:
    limits = httpx.Limits(max_connections=n + 5, max_keepalive_connections=n + 5)
    barrier = threading.Barrier(n)
    with (
        httpx.Client(
            base_url=ctx.args.base_url,
            headers=ctx.api.headers,
            timeout=ctx.args.http_timeout,
            limits=limits,
        ) as client,
        ThreadPoolExecutor(max_workers=n) as pool,
    ):

        def one(_: int) -> tuple[str, float, str] | str:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=30)  # all at once
            try:
                return submit(ctx, client)
            except Fail as exc:
                return exc.reason
            except httpx.HTTPError as exc:
                return ctx.api.http_reason(exc)

        ctx.say(f"   submitting {n} tasks at once")
        started = time.monotonic()
        outcomes = list(pool.map(one, range(n)))
        submitted_in = time.monotonic() - started
        errors = [o for o in outcomes if isinstance(o, str)]
        ids = [o[0] for o in outcomes if not isinstance(o, str)]
        if errors:
            raise Fail(
                f"{len(errors)} of {n} submissions failed; first: {errors[0]}",
                f"{len(ids)}/{n} accepted",
            )
        return finish_all(ctx, ids, started, submitted_in, client, pool)


def finish_all(
    ctx: Context,
    ids: list[str],
    started: float,
    submitted_in: float | None,
    client: httpx.Client | None = None,
    pool: ThreadPoolExecutor | None = None,
) -> str:
    """Wait until every task is final; passes when all succeeded (none lost)."""
    n = len(ids)
    states: dict[str, str] = {}
    pending = list(ids)
    deadline = time.monotonic() + ctx.args.concurrency_timeout
    shown = -1

    def state_of(task_id: str) -> tuple[str, str | None]:
        try:
            return task_id, str(ctx.api.task_status(task_id, client)["state"])
        except (Fail, httpx.HTTPError):
            return task_id, None

    while pending and time.monotonic() < deadline:
        answers = list(pool.map(state_of, pending)) if pool else [state_of(t) for t in pending]
        for task_id, state in answers:
            if state in FINAL:
                states[task_id] = state
        pending = [t for t in pending if t not in states]
        if len(states) != shown:
            shown = len(states)
            ctx.say(f"   {shown}/{n} finished")
        if pending:
            time.sleep(0.5)
    elapsed = time.monotonic() - started
    by_state: dict[str, int] = {}
    for state in states.values():
        by_state[state] = by_state.get(state, 0) + 1
    done = by_state.get("SUCCESS", 0)
    text = f"{done}/{n} SUCCESS in {elapsed:.1f} s"
    if submitted_in is not None:
        text += f" (all submitted in {submitted_in:.1f} s)"
    if pending:
        raise Fail(
            f"{len(pending)} of {n} not finished after {ctx.args.concurrency_timeout:g} s "
            f"(e.g. {pending[0]})",
            text,
        )
    if done != n:
        others = ", ".join(f"{k} {v}" for k, v in sorted(by_state.items()) if k != "SUCCESS")
        raise Fail(f"not all succeeded: {others}", text)
    return text


def redis_memory(ctx: Context) -> str:
    url = ctx.args.redis_url
    if not url:
        raise Skip("no --redis-url given (and REDIS_URL is not set)")
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        info = client.info("memory")
    except redis.AuthenticationError as exc:
        reason = f"{redact(url)} refused us: {exc}; {REDIS_PASSWORD_HINT}"
        raise Fail(reason, "refused") from None
    except redis.RedisError as exc:
        raise Fail(f"cannot read INFO memory from {redact(url)}: {exc}", "unreachable") from None
    finally:
        client.close()
    used = float(info["used_memory"])
    text = f"used {megabytes(used)}, peak {megabytes(float(info.get('used_memory_peak', used)))}"
    maxmemory = int(info.get("maxmemory") or 0)
    text += f", maxmemory {megabytes(maxmemory) if maxmemory else 'unlimited'}"
    if used >= ctx.args.redis_memory_target_mb * 1024 * 1024:
        raise Fail(f"Redis uses more than {ctx.args.redis_memory_target_mb:g} MB", text)
    return text
