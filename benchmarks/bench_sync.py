"""Data-sync throughput against the raw database limit, and the worker's peak memory.

Registers a CSV of N rows through the API, syncs it on a real worker and reports rows/s
(from the ledger's started_at to finished_at) beside, in the same run:
  * SQLite: one ``executemany`` of the same rows into a table with the same unique key;
  * PostgreSQL: ``COPY`` into a temporary table, then the same upsert from it.
Peak RSS of the worker's pool process is sampled every 100 ms during the sync.

    .venv/bin/python -m benchmarks.bench_sync --rows 1000000 --db sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sqlite3
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from benchmarks.stack import bench_stack, describe
from tests.support import TOKEN


def write_csv(path: Path, rows: int) -> None:
    with path.open("w") as f:
        f.write("order_id,sku,warehouse,qty,price,note\n")
        for i in range(rows):
            f.write(f"{i},SKU{i % 9973},WH{i % 7},{i % 101},{i % 997}.{i % 100:02d},batch-a\n")


def prepared_rows(path: Path) -> list[tuple[str, str, str, str, int, str]]:
    """The rows as the sync writes them: key, JSON data and digest per CSV line."""
    now = datetime.now(UTC).isoformat()
    out = []
    with path.open() as f:
        header = f.readline().strip().split(",")
        for line in f:
            data = dict(zip(header, line.rstrip("\n").split(","), strict=True))
            encoded = json.dumps(data, sort_keys=True)
            digest = hashlib.md5(encoded.encode(), usedforsecurity=False).hexdigest()
            out.append(("raw", json.dumps([data["order_id"]]), encoded, digest, 1, now))
    return out


def raw_sqlite(rows: list[tuple[str, str, str, str, int, str]]) -> float:
    db = Path(tempfile.mkdtemp()) / "raw.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE records (id INTEGER PRIMARY KEY, dataset VARCHAR(100) NOT NULL, "
        "key TEXT NOT NULL, data JSON NOT NULL, row_hash VARCHAR(32) NOT NULL, "
        "source_file_id INTEGER NOT NULL, updated_at DATETIME NOT NULL, UNIQUE (dataset, key))"
    )
    started = time.perf_counter()
    conn.executemany(
        "INSERT INTO records (dataset, key, data, row_hash, source_file_id, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.commit()
    elapsed = time.perf_counter() - started
    conn.close()
    return len(rows) / elapsed


def raw_postgres(url: str, rows: list[tuple[str, str, str, str, int, str]]) -> float:
    import asyncpg

    async def run() -> float:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute("DROP TABLE IF EXISTS raw_records")
            await conn.execute("CREATE TABLE raw_records (LIKE records INCLUDING ALL)")
            records = [(d, k, v, h, s, datetime.fromisoformat(t)) for d, k, v, h, s, t in rows]
            started = time.perf_counter()
            async with conn.transaction():
                await conn.execute(
                    "CREATE TEMP TABLE staging (dataset text, key text, data jsonb, "
                    "row_hash text, source_file_id int, updated_at timestamptz) ON COMMIT DROP"
                )
                await conn.copy_records_to_table("staging", records=records)
                await conn.execute(
                    "INSERT INTO raw_records (dataset, key, data, row_hash, source_file_id, "
                    "updated_at) SELECT * FROM staging ON CONFLICT (dataset, key) DO UPDATE "
                    "SET data = excluded.data, row_hash = excluded.row_hash, "
                    "source_file_id = excluded.source_file_id, updated_at = excluded.updated_at "
                    "WHERE raw_records.row_hash IS DISTINCT FROM excluded.row_hash"
                )
            return len(rows) / (time.perf_counter() - started)
        finally:
            await conn.close()

    return asyncio.run(run())


class PeakRss:
    """Samples the RSS of the worker's processes (main and pool children)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak_child = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                for child in self.root.children(recursive=True):
                    self.peak_child = max(self.peak_child, child.memory_info().rss)
            except psutil.Error:
                pass
            self.stop.wait(0.1)


def sync_once(base_url: str, csv: Path, worker_pid: int, dataset: str) -> tuple[float, int, dict]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=600) as client:
        with csv.open("rb") as f:
            r = client.post(
                "/api/data-sync/files",
                files={"file": (csv.name, f, "text/csv")},
                data={"dataset": dataset, "key_columns": "order_id"},
            )
        assert r.status_code == 201, r.text
        memory = PeakRss(worker_pid)
        memory.thread.start()
        task_id = client.post(
            "/api/data-sync/sync-single-file", json={"file_id": r.json()["file_id"]}
        ).json()["task_id"]
        while (body := client.get(f"/api/tasks/{task_id}").json())["state"] not in (
            "SUCCESS",
            "FAILURE",
        ):
            time.sleep(0.5)
        memory.stop.set()
        assert body["state"] == "SUCCESS", body["error"]
        started = datetime.fromisoformat(body["started_at"])
        finished = datetime.fromisoformat(body["finished_at"])
        rate = body["result"]["rows_read"] / (finished - started).total_seconds()
        return rate, memory.peak_child, body["result"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="syncq-sync-bench-"))
    with bench_stack(args.db) as st:
        print(describe(st, "syncq data-sync benchmark"))
        assert st.worker.proc is not None
        for n in args.rows:
            csv = work / f"orders-{n}.csv"
            write_csv(csv, n)
            rate, peak, result = sync_once(
                st.api.base_url, csv, st.worker.proc.pid, f"bench{uuid.uuid4().hex[:6]}"
            )
            rows = prepared_rows(csv)
            raw = (
                raw_sqlite(rows)
                if args.db == "sqlite"
                else raw_postgres(st.env["DATABASE_URL"], rows)
            )
            del rows
            print(
                f"{n:>9} rows ({csv.stat().st_size / 1e6:.0f} MB): syncq {rate:8.0f} rows/s, "
                f"raw {raw:8.0f} rows/s, ratio {rate / raw:.2f}; "
                f"worker peak RSS {peak / 2**20:.0f} MiB; inserted {result['inserted']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
