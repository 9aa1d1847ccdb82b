"""What reading, keying and digesting a file costs a sync worker, per 1,000,000 rows.

The Python half of a sync (``RowShape.next_batch`` over ``readers.iter_rows``, batches of
5,000, as backend/tasks/data_sync.py runs it) in this process, with the collector as a
worker child sets it (``gc.freeze()`` then ``GC_THRESHOLD``) and with Python's default
thresholds, alternating, the best of ``--repeats`` runs of each; iterating the rows alone
is the floor. Usage::

    .venv/bin/python -m benchmarks.bench_prepare_rows [--rows 200000] [--repeats 9] [--format jsonl]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from backend.config import get_settings
from backend.db.rows import Read, RowShape
from backend.files import readers
from backend.runtime.worker import GC_THRESHOLD
from benchmarks.bench_sync import write_file

PYTHON_DEFAULT = (700, 10, 10)
Step = Callable[[RowShape, Iterator[Read]], int]


def timed(path: Path, info: readers.FileInfo, rows: int, step: Step) -> float:
    shape = RowShape(info.columns, ["order_id"])
    source = itertools.islice(readers.iter_rows(path, info), rows)
    started = time.perf_counter()
    while step(shape, source):
        pass
    return time.perf_counter() - started


def prepare(shape: RowShape, source: Iterator[Read]) -> int:
    return shape.next_batch(source, 5_000).read


def iterate(_: RowShape, source: Iterator[Read]) -> int:
    return sum(1 for _ in itertools.islice(source, 5_000))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp(prefix="syncq-prepare-")) / f"orders.{args.format}"
    write_file(path, args.format, args.rows)
    info = readers.inspect(path, args.format, readers.XlsxLimits.of(get_settings()))
    gc.freeze()
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, threshold, step in [
            (f"next_batch, gc {PYTHON_DEFAULT} (Python's default)", PYTHON_DEFAULT, prepare),
            (f"next_batch, gc {GC_THRESHOLD} (the worker's)", GC_THRESHOLD, prepare),
            ("iterating the rows only", GC_THRESHOLD, iterate),
        ]:
            gc.set_threshold(*threshold)
            took = timed(path, info, args.rows, step)
            best[name] = min(best.get(name, took), took)
    gc.set_threshold(*PYTHON_DEFAULT)
    path.unlink()
    print(
        f"# {platform.node()}, Python {platform.python_version()}, {args.rows:,} "
        f"{args.format} rows, best of {args.repeats}"
    )
    print("| step | seconds per 1,000,000 rows |")
    print("|---|---|")
    for name, took in best.items():
        print(f"| {name} | {took * 1_000_000 / args.rows:.2f} |")


if __name__ == "__main__":
    main()
