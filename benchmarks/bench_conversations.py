"""Conversation throughput and read latency, through the API and a real worker.

Prints messages saved per second (submit to SUCCESS, 10 clients) and the latency of
``GET /api/conversations/{id}`` for a 1,000-message session (the read runs as a task on
the database queue and the request waits for it).

    .venv/bin/python -m benchmarks.bench_conversations [--messages 1000] [--db sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import UTC, datetime

import httpx

from benchmarks.stack import bench_stack, describe
from tests.support import TOKEN


async def save_all(base_url: str, session: str, count: int) -> float:
    """Messages/s from the first submission to the last ``finished_at`` in the ledger."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
        sem = asyncio.Semaphore(10)
        ids: list[str] = []

        async def one(i: int) -> None:
            async with sem:
                r = await client.post(
                    f"/api/conversations/{session}/messages",
                    json={"role": "user", "content": f"message number {i} " + "x" * 200},
                )
                ids.append(r.json()["task_id"])

        started = datetime.now(UTC)
        await asyncio.gather(*(one(i) for i in range(count)))
        while (await client.get(f"/api/tasks/{ids[-1]}")).json()["state"] != "SUCCESS":
            await asyncio.sleep(0.05)
        finished = []
        for task_id in ids:
            while (body := (await client.get(f"/api/tasks/{task_id}")).json())["state"] != (
                "SUCCESS"
            ):
                await asyncio.sleep(0.05)
            finished.append(datetime.fromisoformat(body["finished_at"]))
        return count / (max(finished) - started).total_seconds()


def read_latencies(base_url: str, session: str, reads: int, expected: int) -> list[float]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    latencies = []
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        for _ in range(reads):
            started = time.perf_counter()
            r = client.get(f"/api/conversations/{session}", params={"wait": 30})
            latencies.append((time.perf_counter() - started) * 1000)
            assert r.status_code == 200 and len(r.json()["messages"]) == expected, r.text[:200]
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--reads", type=int, default=20)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()

    with bench_stack(args.db) as st:
        print(describe(st, "syncq conversation benchmark"))
        rate = asyncio.run(save_all(st.api.base_url, "bench-session", args.messages))
        print(f"saved {args.messages} messages (10 clients): {rate:.1f} messages/s")
        lat = sorted(read_latencies(st.api.base_url, "bench-session", args.reads, args.messages))
        print(
            f"read of a {args.messages}-message session, {args.reads} reads: "
            f"p50 {statistics.median(lat):.1f} ms, max {lat[-1]:.1f} ms"
        )


if __name__ == "__main__":
    main()
