"""Data-sync throughput against the raw database limit, parsing included (issue 14).

For each format and size, a 10-column file (``order_id,sku,warehouse,qty,price,currency,
customer,city,created,note``; Chinese and Latin text, a quoted note with a comma) is
uploaded through the API and synced on a real worker (prefork, concurrency 2), then
synced again unchanged. Rows/s is ``rows_read / (finished_at - started_at)`` from the
ledger. In the same run, on the same file, the raw limit *including parsing*:

  * SQLite: Python's ``csv`` module (``json.loads`` per line for JSON Lines, openpyxl's
    read-only mode for XLSX), ``json.dumps`` of each row, an ``executemany`` upsert into a
    table unique on (dataset, key); batches of 5,000, each committed; WAL,
    ``synchronous=NORMAL``;
  * PostgreSQL: the same parsing and ``json.dumps``, then per batch of 5,000 ``COPY`` into
    a temporary table and ``INSERT … SELECT … ON CONFLICT DO UPDATE``, each committed.

Peak RSS of the worker's pool processes is sampled every 100 ms during the syncs.

    .venv/bin/python -m benchmarks.bench_sync --db sqlite --rows 100000 1000000
    .venv/bin/python -m benchmarks.bench_sync --db postgresql --formats csv --rows 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.stack import bench_stack, describe
from tests.support import TOKEN

BATCH = 5000
COLUMNS = ["order_id", "sku", "warehouse", "qty", "price"]
COLUMNS += ["currency", "customer", "city", "created", "note"]
CITIES = ["上海", "北京", "深圳", "München", "São Paulo", "Kraków", "广州", "Zürich"]
NAMES = ["张伟", "王芳", "李娜", "Zoë Müller", "José García", "刘洋", "Åsa Öberg", "陈静"]
FORMATS = {"csv": ".csv", "gb18030": ".csv", "jsonl": ".jsonl", "xlsx": ".xlsx"}


def values(i: int) -> list[str]:
    return [
        str(i),
        f"SKU-{i % 9973:05d}",
        f"WH{i % 7}",
        str(i % 101),
        f"{i % 997}.{i % 100:02d}",
        "CNY" if i % 3 else "EUR",
        NAMES[i % 8],
        CITIES[i % 8],
        f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00",
        f"备注 {i % 13}, note with comma",
    ]


def write_file(path: Path, fmt: str, rows: int) -> None:
    if fmt == "xlsx":
        from openpyxl import Workbook

        book = Workbook(write_only=True)
        sheet = book.create_sheet()
        sheet.append(COLUMNS)
        for i in range(rows):
            sheet.append(values(i))
        book.save(path)
        return
    encoding = "gb18030" if fmt == "gb18030" else "utf-8"
    with path.open("w", encoding=encoding, newline="") as f:
        if fmt == "jsonl":
            for i in range(rows):
                f.write(json.dumps(dict(zip(COLUMNS, values(i), strict=True)), ensure_ascii=False))
                f.write("\n")
        else:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(COLUMNS)
            out.writerows(values(i) for i in range(rows))


def parsed(path: Path, fmt: str) -> Iterator[dict[str, Any]]:
    """The file's rows as a plain program reads them, with the stock parser."""
    if fmt == "xlsx":
        from openpyxl import load_workbook

        book = load_workbook(path, read_only=True)
        sheet_rows = book.worksheets[0].iter_rows(values_only=True)
        header = [str(c) for c in next(sheet_rows)]
        for cells in sheet_rows:
            yield dict(zip(header, cells, strict=False))
        book.close()
        return
    encoding = "gb18030" if fmt == "gb18030" else "utf-8"
    with path.open(encoding=encoding, newline="") as f:
        if fmt == "jsonl":
            for line in f:
                yield json.loads(line)
        else:
            reader = csv.reader(f)
            header = next(reader)
            for cells in reader:
                yield dict(zip(header, cells, strict=False))


def raw_batches(path: Path, fmt: str) -> Iterator[list[tuple[str, str]]]:
    rows = parsed(path, fmt)
    while batch := list(itertools.islice(rows, BATCH)):
        yield [(json.dumps([str(r["order_id"])]), json.dumps(r, ensure_ascii=False)) for r in batch]


RAW_UPSERT = (
    "INSERT INTO records (dataset, key, data, row_hash, source_file_id, updated_at) "
    "VALUES ('raw', ?, ?, '', 1, ?) ON CONFLICT (dataset, key) DO UPDATE SET "
    "data = excluded.data, updated_at = excluded.updated_at"
)


def raw_sqlite(path: Path, fmt: str) -> float:
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
    count = 0
    for batch in raw_batches(path, fmt):
        now = datetime.now(UTC).isoformat()
        conn.executemany(RAW_UPSERT, [(k, d, now) for k, d in batch])
        conn.commit()
        count += len(batch)
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def raw_postgres(url: str, path: Path, fmt: str) -> float:
    import asyncpg

    async def run() -> float:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute("DROP TABLE IF EXISTS raw_records")
            await conn.execute("CREATE TABLE raw_records (LIKE records INCLUDING ALL)")
            await conn.execute(
                "CREATE TEMP TABLE staging (key text, data jsonb) ON COMMIT DELETE ROWS"
            )
            started = time.perf_counter()
            count = 0
            for batch in raw_batches(path, fmt):
                async with conn.transaction():
                    await conn.copy_records_to_table("staging", records=batch)
                    await conn.execute(
                        "INSERT INTO raw_records (dataset, key, data, row_hash, source_file_id, "
                        "updated_at) SELECT 'raw', key, data, '', 1, now() FROM staging "
                        "ON CONFLICT (dataset, key) DO UPDATE SET data = excluded.data, "
                        "updated_at = excluded.updated_at"
                    )
                count += len(batch)
            return count / (time.perf_counter() - started)
        finally:
            await conn.execute("DROP TABLE IF EXISTS raw_records")
            await conn.close()

    return asyncio.run(run())


class PeakRss:
    """Samples the RSS of the worker's pool processes."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak_child = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                for child in self.root.children(recursive=True):
                    self.peak_child = max(self.peak_child, child.memory_info().rss)
            except psutil.Error:
                pass
            self.stop.wait(0.1)


class Refused(Exception):
    """The sync ended FAILURE (a workbook past its XLSX limits, say): reported, not timed."""


def sync(client: httpx.Client, file_id: int) -> tuple[float, dict[str, Any]]:
    task_id = client.post("/api/data-sync/sync-single-file", json={"file_id": file_id}).json()[
        "task_id"
    ]
    while (body := client.get(f"/api/tasks/{task_id}").json())["state"] not in (
        "SUCCESS",
        "FAILURE",
    ):
        time.sleep(0.25)
    if body["state"] != "SUCCESS":
        raise Refused(body["error"]["message"])
    started = datetime.fromisoformat(body["started_at"])
    finished = datetime.fromisoformat(body["finished_at"])
    return body["result"]["rows_read"] / (finished - started).total_seconds(), body["result"]


def measure(base_url: str, path: Path, worker_pid: int) -> tuple[float, float, int]:
    """(first sync rows/s, unchanged re-sync rows/s, worker peak RSS)."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=600) as client:
        with path.open("rb") as f:
            r = client.post(
                "/api/data-sync/files",
                files={"file": (path.name, f, "application/octet-stream")},
                data={"dataset": f"bench{uuid.uuid4().hex[:6]}", "key_columns": "order_id"},
            )
        assert r.status_code == 201, r.text
        memory = PeakRss(worker_pid)
        try:
            first, result = sync(client, r.json()["file_id"])
            assert result["inserted"] == result["rows_read"], result
            again, result = sync(client, r.json()["file_id"])
            assert result["unchanged"] == result["rows_read"], result
        finally:
            memory.stop.set()
        return first, again, memory.peak_child


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--formats", nargs="+", choices=list(FORMATS), default=list(FORMATS))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="syncq-sync-bench-"))
    with bench_stack(args.db) as st:
        print(describe(st, "syncq data-sync benchmark"), flush=True)
        assert st.worker.proc is not None
        print(
            "| format | rows | file | syncq first rows/s | raw rows/s | ratio "
            "| re-sync rows/s | re-sync / first | worker peak RSS |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for fmt, n in itertools.product(args.formats, args.rows):
            path = work / f"orders-{fmt}-{n}{FORMATS[fmt]}"
            write_file(path, fmt, n)
            size = f"{path.stat().st_size / 1e6:.0f} MB"
            try:
                first, again, peak = measure(st.api.base_url, path, st.worker.proc.pid)
            except Refused as exc:
                print(f"| {fmt} | {n:,} | {size} | refused: {exc} | | | | | |", flush=True)
                path.unlink()
                continue
            raw = (
                raw_sqlite(path, fmt)
                if args.db == "sqlite"
                else raw_postgres(st.env["DATABASE_URL"], path, fmt)
            )
            print(
                f"| {fmt} | {n:,} | {size} | {first:,.0f} | "
                f"{raw:,.0f} | {first / raw:.2f} | {again:,.0f} | {again / first:.1f} | "
                f"{peak / 2**20:.0f} MiB |",
                flush=True,
            )
            path.unlink()


if __name__ == "__main__":
    main()
