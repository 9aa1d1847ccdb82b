"""Purging expired ledger rows: wall time and the longest single transaction.

Seeds N finished task-ledger rows older than the retention (plus 1,000 recent ones that
must survive) straight into the database, then runs the ``purge-task-runs`` schedule
entry through the API on a real worker and reads the figures from its result.

    .venv/bin/python -m benchmarks.bench_purge --rows 1000000 --db sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import func, insert, select

from backend.db.engine import make_unpooled_engine
from backend.db.models import TaskRun
from benchmarks.stack import bench_stack, describe
from tests.support import TOKEN


async def seed(url: str, rows: int) -> None:
    engine = make_unpooled_engine(url)
    old = datetime.now(UTC) - timedelta(days=30)
    recent = datetime.now(UTC)

    def row(i: int, when: datetime) -> dict[str, object]:
        return {
            "id": f"seed-{i:09d}", "name": "system.noop", "queue": "default",
            "state": "SUCCESS", "priority": 5, "args": {}, "executor": "celery",
            "attempts": 1, "recoveries": 0, "cancel_requested": False,
            "submitted_at": when, "dispatched_at": when, "finished_at": when,
        }  # fmt: skip

    async with engine.begin() as conn:
        for start in range(0, rows, 20_000):
            batch = [row(i, old) for i in range(start, min(rows, start + 20_000))]
            await conn.execute(insert(TaskRun), batch)
        await conn.execute(insert(TaskRun), [row(rows + i, recent) for i in range(1000)])
    await engine.dispose()


async def count(url: str) -> int:
    engine = make_unpooled_engine(url)
    async with engine.connect() as conn:
        n = (await conn.execute(select(func.count()).select_from(TaskRun))).scalar_one()
    await engine.dispose()
    return int(n)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    with bench_stack(args.db) as st:
        print(describe(st, "syncq purge benchmark"))
        url = st.env["DATABASE_URL"]
        started = time.perf_counter()
        asyncio.run(seed(url, args.rows))
        print(f"seeded {args.rows} expired rows in {time.perf_counter() - started:.0f} s")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=st.api.base_url, headers=headers, timeout=30) as client:
            task_id = client.post("/api/schedules/purge-task-runs/run").json()["task_id"]
            while (body := client.get(f"/api/tasks/{task_id}").json())["state"] not in (
                "SUCCESS",
                "FAILURE",
            ):
                time.sleep(0.5)
        assert body["state"] == "SUCCESS", body["error"]
        wall = (
            datetime.fromisoformat(body["finished_at"]) - datetime.fromisoformat(body["started_at"])
        ).total_seconds()
        result = body["result"]
        print(
            f"purged {result['deleted_task_runs']} ledger rows in {wall:.1f} s "
            f"({result['deleted_task_runs'] / wall:.0f} rows/s); longest transaction "
            f"{result['longest_transaction_ms']} ms; rows left {asyncio.run(count(url))}"
        )


if __name__ == "__main__":
    main()
