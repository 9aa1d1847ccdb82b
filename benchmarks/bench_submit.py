"""Submission latency and end-to-end throughput of the runtime, against raw Celery.

Starts its own redis-server, Celery worker and API (uvicorn) on free ports, then prints:
  * submissions/s and p50/p95/p99 submit latency at 1, 10 and 100 concurrent clients,
    with Redis up and with Redis down (local executor);
  * end-to-end no-op tasks/s (submit to SUCCESS) through the API, beside raw Celery
    (``.delay()`` of a bare no-op straight to the broker, same worker), and their ratio.

    .venv/bin/python -m benchmarks.bench_submit [--requests 400] [--tasks 500] [--db sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from datetime import UTC, datetime

import httpx

from benchmarks.loadgen import post_load
from benchmarks.stack import bench_stack, describe
from tests.support import TOKEN, wait_for


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def submit_load(base_url: str, clients: int, total: int) -> tuple[float, list[float]]:
    result = asyncio.run(
        post_load(base_url, "/api/tasks", {"name": "system.noop"}, TOKEN, clients, total)
    )
    assert result.statuses == {202: total}, result.statuses
    return result.rate, result.latencies_ms


async def end_to_end(base_url: str, total: int) -> float:
    """Submit ``total`` no-ops from 10 clients; the rate is total / (last finished_at - start).

    Completion is read from the ledger's own ``finished_at`` afterwards, so the benchmark
    polls only one task while the work runs and does not steal the CPU it measures.
    """
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        sem = asyncio.Semaphore(10)
        ids: list[str] = []

        async def one() -> None:
            async with sem:
                r = await client.post("/api/tasks", json={"name": "system.noop"})
                ids.append(r.json()["task_id"])

        started = datetime.now(UTC)
        await asyncio.gather(*(one() for _ in range(total)))
        finished: list[datetime] = []
        for task_id in reversed(ids):
            while True:
                body = (await client.get(f"/api/tasks/{task_id}")).json()
                if body["state"] == "SUCCESS":
                    finished.append(datetime.fromisoformat(body["finished_at"]))
                    break
                await asyncio.sleep(0.05)
        return total / (max(finished) - started).total_seconds()


def raw_celery(redis_url: str, total: int) -> float:
    os.environ["REDIS_URL"] = redis_url
    from benchmarks.raw_tasks import raw_noop

    started = time.perf_counter()
    results = [raw_noop.delay() for _ in range(total)]
    for result in results:
        result.get(timeout=60)
    elapsed = time.perf_counter() - started
    # Let go of the results while Redis is still there: their finalizers talk to it.
    del results, result
    gc.collect()
    return total / elapsed


def row(label: str, rate: float, lat: list[float]) -> str:
    return (
        f"| {label:<24} | {rate:8.1f} | {percentile(lat, 50):7.1f} | "
        f"{percentile(lat, 95):7.1f} | {percentile(lat, 99):7.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400, help="submissions per level")
    parser.add_argument("--tasks", type=int, default=500, help="tasks for the end-to-end run")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn processes")
    args = parser.parse_args()

    with bench_stack(args.db, api_workers=args.api_workers, include="benchmarks.raw_tasks") as st:
        api, redis_server = st.api, st.redis
        print(describe(st, "syncq submit benchmark", args.api_workers))
        print("| run                      | submits/s | p50 ms | p95 ms | p99 ms |")
        print("|---|---|---|---|---|")
        # End to end first, on empty queues; the submit runs below leave a backlog.
        ours = asyncio.run(end_to_end(api.base_url, args.tasks))
        raw = raw_celery(redis_server.url, args.tasks)
        for clients in (1, 10, 100):
            rate, lat = submit_load(api.base_url, clients, args.requests)
            print(row(f"Redis up, {clients} clients", rate, lat), flush=True)

        redis_server.kill()
        wait_for(
            lambda: httpx.get(f"{api.base_url}/health").json()["broker"] == "down", 10, what="down"
        )
        for clients in (1, 10, 100):
            rate, lat = submit_load(api.base_url, clients, args.requests)
            print(row(f"Redis down, {clients} clients", rate, lat), flush=True)

        print()
        print(f"end-to-end no-op, {args.tasks} tasks, worker concurrency 2:")
        print(f"  syncq (HTTP submit → ledger → Celery → SUCCESS): {ours:8.1f} tasks/s")
        print(f"  raw Celery (.delay() → result):                  {raw:8.1f} tasks/s")
        print(f"  ratio syncq / raw: {ours / raw:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
