"""Export throughput per format, and the worker's peak memory, at N records.

Starts its own Redis, database, API and worker (benchmarks/stack.py), puts N records of
six columns into one dataset straight through the database (a sync of them is
bench_sync's business), then exports the dataset as CSV, JSON Lines and XLSX through the
API, one after the other, and reports rows/s from the ledger's started_at to finished_at,
the file's size, and the peak RSS of the worker's pool processes during each export
(sampled every 100 ms) beside their RSS before it: flat memory means the peak does not
grow with N.

    .venv/bin/python -m benchmarks.bench_export --records 1000000 --db sqlite
    .venv/bin/python -m benchmarks.bench_export --records 100000 1000000 --db postgresql
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import psutil

from benchmarks.bench_sync import PeakRss
from benchmarks.stack import bench_stack, describe
from tests.support import TOKEN

COLUMNS = ["order_id", "sku", "warehouse", "qty", "price", "note"]
BATCH = 50_000


def records(n: int) -> Iterator[tuple[str, str, str]]:
    """(key, data, row_hash) as a sync of bench_sync's CSV would store them."""
    for i in range(n):
        values = [str(i), f"SKU{i % 9973}", f"WH{i % 7}", str(i % 101), f"{i % 997}.{i % 100:02d}"]
        data = dict(zip(COLUMNS, [*values, "batch-a 出库"], strict=True))
        text = json.dumps(data, ensure_ascii=False)
        yield json.dumps([str(i)]), text, hashlib.md5(text.encode()).hexdigest()


def seed_sqlite(url: str, dataset: str, n: int) -> None:
    conn = sqlite3.connect(url.split("///", 1)[1])
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    conn.execute(
        "INSERT INTO datasets (name, key_columns, created_at, columns) VALUES (?, ?, ?, ?)",
        (dataset, json.dumps(["order_id"]), now, json.dumps(COLUMNS)),
    )
    rows = records(n)
    while chunk := [(dataset, k, d, h, 0, now) for k, d, h in _take(rows, BATCH)]:
        conn.executemany(
            "INSERT INTO records (dataset, key, data, row_hash, source_file_id, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            chunk,
        )
    conn.commit()
    conn.close()


def seed_postgres(url: str, dataset: str, n: int) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        now = datetime.now(UTC)
        try:
            await conn.execute(
                "INSERT INTO datasets (name, key_columns, created_at, columns) "
                "VALUES ($1, $2, $3, $4)",
                dataset, json.dumps(["order_id"]), now, json.dumps(COLUMNS),
            )  # fmt: skip
            rows = records(n)
            while chunk := [(dataset, k, d, h, 0, now) for k, d, h in _take(rows, BATCH)]:
                await conn.copy_records_to_table(
                    "records",
                    records=chunk,
                    columns=["dataset", "key", "data", "row_hash", "source_file_id", "updated_at"],
                )
            await conn.execute("ANALYZE records")
        finally:
            await conn.close()

    asyncio.run(run())


def _take(rows: Iterator[tuple[str, str, str]], n: int) -> list[tuple[str, str, str]]:
    out = []
    for row in rows:
        out.append(row)
        if len(out) == n:
            break
    return out


def pool_rss(pid: int) -> int:
    try:
        return max(
            (c.memory_info().rss for c in psutil.Process(pid).children(recursive=True)),
            default=0,
        )
    except psutil.Error:
        return 0


def export_once(client: httpx.Client, dataset: str, fmt: str, worker_pid: int) -> dict[str, float]:
    before = pool_rss(worker_pid)
    memory = PeakRss(worker_pid)
    r = client.post(f"/api/data-sync/datasets/{dataset}/exports", json={"format": fmt})
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    while (body := client.get(f"/api/tasks/{task_id}").json())["state"] not in (
        "SUCCESS",
        "FAILURE",
        "REVOKED",
    ):
        time.sleep(0.5)
    memory.stop.set()
    assert body["state"] == "SUCCESS", body["error"]
    seconds = (
        datetime.fromisoformat(body["finished_at"]) - datetime.fromisoformat(body["started_at"])
    ).total_seconds()
    return {
        "rows": body["result"]["rows"],
        "seconds": seconds,
        "rate": body["result"]["rows"] / seconds,
        "mb": body["result"]["bytes"] / 1e6,
        "rss_before": before / 2**20,
        "rss_peak": memory.peak_child / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--formats", nargs="+", default=["csv", "jsonl", "xlsx"])
    args = parser.parse_args()
    # A million-row workbook takes minutes: past the default soft limit of 300 s.
    os.environ.setdefault("TASK_SOFT_TIME_LIMIT", "3000")
    os.environ.setdefault("TASK_TIME_LIMIT", "3600")
    with bench_stack(args.db) as st:
        print(describe(st, "syncq export benchmark"))
        assert st.worker.proc is not None
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=st.api.base_url, headers=headers, timeout=60) as client:
            for n in args.records:
                dataset = f"bench{uuid.uuid4().hex[:6]}"
                started = time.perf_counter()
                (seed_sqlite if args.db == "sqlite" else seed_postgres)(
                    st.env["DATABASE_URL"], dataset, n
                )
                print(f"seeded {n:,} records in {time.perf_counter() - started:.0f} s", flush=True)
                for fmt in args.formats:
                    m = export_once(client, dataset, fmt, st.worker.proc.pid)
                    print(
                        f"{n:>9,} records {fmt:>5}: {m['rate']:8,.0f} rows/s "
                        f"({m['seconds']:.1f} s, {m['mb']:.0f} MB); worker RSS "
                        f"{m['rss_before']:.0f} MiB before, peak {m['rss_peak']:.0f} MiB",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
