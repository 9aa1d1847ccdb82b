"""SQLite: two ways a sync batch finds which of its rows differ from the stored records.

A copy of ``records`` (the real table's columns and unique index) holds ``--rows`` rows;
batches of 5,000 (key, digest) pairs are looked up the way backend/db/queries/data_sync.py
does it, in this process with ``sqlite3``:

* ``IN`` lists: the stored digests of ``IN_CHUNK`` keys at a time (a whole batch where
  SQLite takes that many variables), compared in Python (a batch with a key repeated;
  other batches that are not probed are written whole and counted afterwards);
* the probe: the batch's pairs as one JSON object joined to the records (``json_each``),
  only the keys that differ returned (a batch after a mostly-unchanged one).

Both for keys that are all stored and unchanged (a re-sync) and for keys never stored (a
first sync), alternating, the best of ``--repeats``. Usage::

    .venv/bin/python -m benchmarks.bench_sqlite_probe [--rows 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from xxhash import xxh3_128_hexdigest

from backend.db.queries.data_sync import IN_CHUNK, PROBE_SQLITE

BATCH = 5_000
Pairs = list[tuple[str, str]]
Way = Callable[[sqlite3.Connection, Pairs], int]


def build(path: Path, rows: int) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE records (id INTEGER PRIMARY KEY, dataset VARCHAR(100) NOT NULL, "
        "key TEXT NOT NULL, data JSON NOT NULL, row_hash VARCHAR(32) NOT NULL, "
        "source_file_id INTEGER NOT NULL, updated_at DATETIME NOT NULL, "
        "UNIQUE (dataset, key))"
    )
    data = orjson.dumps({"sku": "SKU-1", "city": "北京", "note": "a, quoted note"}).decode()
    db.executemany(
        "INSERT INTO records (dataset, key, data, row_hash, source_file_id, updated_at) "
        "VALUES ('bench', ?, ?, ?, 1, '2026-01-01 00:00:00')",
        ((key, data, digest) for key, digest in pairs("ORD", rows)),
    )
    db.commit()
    db.close()


def pairs(prefix: str, rows: int) -> Pairs:
    keys = [f'["{prefix}-{i:08d}"]' for i in range(rows)]
    return [(key, xxh3_128_hexdigest(key.encode())) for key in keys]


def in_lists(db: sqlite3.Connection, batch: Pairs) -> int:
    stored: dict[str, str] = {}
    keys = [key for key, _ in batch]
    for i in range(0, len(keys), IN_CHUNK):
        chunk = keys[i : i + IN_CHUNK]
        stored.update(
            db.execute(
                "SELECT key, row_hash FROM records WHERE dataset = ? AND key IN "
                f"({','.join('?' * len(chunk))})",
                ["bench", *chunk],
            ).fetchall()
        )
    return sum(1 for key, digest in batch if stored.get(key) != digest)


def probe(db: sqlite3.Connection, batch: Pairs) -> int:
    probed = [orjson.dumps(dict(batch)).decode(), "bench"]
    return len(db.execute(PROBE_SQLITE, probed).fetchall())


def timed(db: sqlite3.Connection, way: Way, all_: Pairs) -> float:
    started = time.perf_counter()
    for i in range(0, len(all_), BATCH):
        way(db, all_[i : i + BATCH])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp(prefix="syncq-probe-")) / "records.db"
    build(path, args.rows)
    db = sqlite3.connect(path)
    cases = {"stored, unchanged": pairs("ORD", args.rows), "never stored": pairs("NEW", args.rows)}
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeats):
        for case, batch in cases.items():
            for name, way in (("IN lists + Python", in_lists), ("probe (json_each)", probe)):
                took = timed(db, way, batch)
                best[case, name] = min(best.get((case, name), took), took)
    db.close()
    print(
        f"# {platform.node()}, Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, {args.rows:,} records, batches of {BATCH:,}, "
        f"best of {args.repeats}"
    )
    print("| keys | IN lists + Python, s per 1,000,000 | probe (json_each), s per 1,000,000 |")
    print("|---|---|---|")
    for case in cases:
        scale = 1_000_000 / args.rows
        print(
            f"| {case} | {best[case, 'IN lists + Python'] * scale:.2f} "
            f"| {best[case, 'probe (json_each)'] * scale:.2f} |"
        )
    path.unlink()


if __name__ == "__main__":
    main()
