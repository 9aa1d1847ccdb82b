"""A newer file over a dataset, batch by batch (issue 14): each row counts once as
inserted, updated or unchanged, in file order, and the records end as the newer file
says, whichever path a batch took. On PostgreSQL a batch after a mostly-unchanged one
(and the first batch, a small one, of a file whose last sync succeeded) asks which
rows differ before it sends any (``upsert_records(mostly_unchanged=True)``; SQLite in one
statement, the batch's key and digest pairs as a JSON object joined to the
records), while the next batch is read; such batches hold four batches' rows. Other
batches: on PostgreSQL one INSERT … SELECT whose RETURNING tells inserted from updated;
on SQLite, written whole and counted afterwards from the upsert's changes and the rise of
the largest id, or, when a key repeats, after reading their stored digests. A key
repeated in a batch counts in file order on both. Bodies run in this process
(backend/runtime/inprocess.py) against a real database, batches of 100 rows (400 after a
mostly-unchanged one)."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from backend.config import Settings
from backend.constants import TaskName
from backend.db.engine import get_session_factory
from backend.db.models import Record, SyncFile
from backend.files import readers
from backend.files.readers import BadFile
from backend.runtime.inprocess import run_body
from backend.tasks import data_sync
from backend.tasks.data_sync import READ_AHEAD_GC_YOUNG
from tests.helpers import register_in_process

ROWS = 1000


def _csv(rows: dict[int, str]) -> bytes:
    return ("sku,name\n" + "".join(f"S{k:05d},{v}\n" for k, v in rows.items())).encode()


async def _sync(settings: Settings, content: bytes, dataset: str) -> dict[str, Any]:
    file_id = await register_in_process(settings, content, dataset)
    return await _sync_again(settings, file_id)


async def _sync_again(settings: Settings, file_id: int) -> dict[str, Any]:
    run = await run_body(TaskName.SYNC_FILE, {"file_id": file_id}, settings=settings)
    return {k: run.result[k] for k in ("rows_read", "inserted", "updated", "unchanged")}


async def _records(settings: Settings, dataset: str) -> dict[str, str]:
    async with get_session_factory(settings)() as session:
        found = await session.execute(
            select(Record.key, Record.data).where(Record.dataset == dataset)
        )
        return {json.loads(k)[0]: d["name"] for k, d in found.all()}


async def test_a_newer_file_counts_each_row_once_and_leaves_the_records_as_it_says(
    body_settings: Settings,
) -> None:
    settings = body_settings.model_copy(update={"sync_batch_size": 100})
    dataset = f"changes_{uuid.uuid4().hex[:8]}"
    first = {k: f"item {k}" for k in range(ROWS)}
    assert await _sync(settings, _csv(first), dataset) == {
        "rows_read": ROWS, "inserted": ROWS, "updated": 0, "unchanged": 0,
    }  # fmt: skip

    # Mostly the same file: a few rows changed, in the first batch and in late ones (after
    # unchanged batches), a few new keys at the end, and a key a second time, changed, in
    # the first batch (S00010) and in a batch after mostly-unchanged ones (S00420, which
    # changed once already): in file order each is one more update, on both databases.
    newer = dict(first)
    for k in (3, 150, 420, 421, 999):
        newer[k] = f"changed {k}"
    for k in range(ROWS, ROWS + 7):
        newer[k] = f"new {k}"
    lines = _csv(newer).decode().splitlines(keepends=True)
    content = "".join(
        [*lines[:51], "S00010,twice\n", *lines[51:432], "S00420,twice 420\n", *lines[432:]]
    ).encode()
    assert await _sync(settings, content, dataset) == {
        "rows_read": ROWS + 9, "inserted": 7, "updated": 7, "unchanged": ROWS - 5,
    }  # fmt: skip
    newer[10], newer[420] = "twice", "twice 420"
    expected = {f"S{k:05d}": v for k, v in newer.items()}
    assert await _records(settings, dataset) == expected

    # The same rows again, as another file (a trailing blank line): nothing is written;
    # S00010 is "item 10" then "twice" against a stored "twice": two updates in file order,
    # and S00420 two more.
    again = await _sync(settings, content + b"\n", dataset)
    assert again == {"rows_read": ROWS + 9, "inserted": 0, "updated": 4, "unchanged": ROWS + 5}
    assert await _records(settings, dataset) == expected


async def test_a_file_synced_again_after_another_changed_its_rows_puts_them_back(
    body_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file whose last sync succeeded probes from its first batch on (it is most likely
    # unchanged), and that batch is small; here it, and a few rows later, were changed by
    # another file.
    settings = body_settings.model_copy(update={"sync_batch_size": 100})
    monkeypatch.setattr(data_sync, "FIRST_PROBE_ROWS", 30)
    batches: list[tuple[int, bool]] = []
    upsert = data_sync.q.upsert_records

    async def seen(*args: Any, **kwargs: Any) -> Any:
        batches.append((len(kwargs["rows"]), kwargs["mostly_unchanged"]))
        return await upsert(*args, **kwargs)

    monkeypatch.setattr(data_sync.q, "upsert_records", seen)
    dataset = f"changes_{uuid.uuid4().hex[:8]}"
    first = {k: f"item {k}" for k in range(ROWS)}
    file_id = await register_in_process(settings, _csv(first), dataset)
    assert await _sync_again(settings, file_id) == {
        "rows_read": ROWS, "inserted": ROWS, "updated": 0, "unchanged": 0,
    }  # fmt: skip
    assert batches[:2] == [(100, False), (100, False)]  # never synced: no guess
    changed = [*range(30), 500, 999]
    await _sync(settings, _csv({k: f"other {k}" for k in changed}), dataset)

    batches.clear()
    assert await _sync_again(settings, file_id) == {
        "rows_read": ROWS, "inserted": 0, "updated": len(changed),
        "unchanged": ROWS - len(changed),
    }  # fmt: skip
    # The first batch, all changed, was probed; the next, four batches' rows read meanwhile,
    # is written whole (the batch before was all changed); it was mostly unchanged, so the
    # one after is probed again.
    assert batches[:3] == [(30, True), (400, False), (100, True)]
    assert await _records(settings, dataset) == {f"S{k:05d}": v for k, v in first.items()}
    assert await _sync_again(settings, file_id) == {
        "rows_read": ROWS, "inserted": 0, "updated": 0, "unchanged": ROWS,
    }  # fmt: skip


async def test_batches_of_new_changed_and_unchanged_rows_count_each_row_once(
    body_settings: Settings,
) -> None:
    # No batch of the newer file is mostly unchanged and no key repeats, so each is written
    # whole and counted afterwards (SQLite: the upsert's changes and the rise of the
    # largest id), the third batch holding changed, unchanged and new rows at once.
    settings = body_settings.model_copy(update={"sync_batch_size": 100})
    dataset = f"changes_{uuid.uuid4().hex[:8]}"
    await _sync(settings, _csv({k: f"item {k}" for k in range(250)}), dataset)
    newer = {k: f"changed {k}" if k % 3 else f"item {k}" for k in range(250)}
    newer |= {k: f"new {k}" for k in range(250, 300)}

    counts = await _sync(settings, _csv(newer), dataset)

    unchanged = len(range(0, 250, 3))
    assert counts == {
        "rows_read": 300, "inserted": 50, "updated": 250 - unchanged, "unchanged": unchanged,
    }  # fmt: skip
    assert await _records(settings, dataset) == {f"S{k:05d}": v for k, v in newer.items()}


async def test_two_syncs_at_once_each_count_only_their_own_rows(body_settings: Settings) -> None:
    # Their batches interleave on two connections; each batch's counts are its own (on
    # SQLite each batch takes the write lock before it reads the largest id).
    settings = body_settings.model_copy(update={"sync_batch_size": 100})
    dataset = f"changes_{uuid.uuid4().hex[:8]}"
    files = [_csv({k: f"{n} {k}" for k in range(n * ROWS, (n + 1) * ROWS)}) for n in (0, 1)]

    both = await asyncio.gather(*(_sync(settings, f, dataset) for f in files))

    assert both == [{"rows_read": ROWS, "inserted": ROWS, "updated": 0, "unchanged": 0}] * 2
    assert len(await _records(settings, dataset)) == 2 * ROWS


async def test_keys_with_quotes_backslashes_and_any_script_are_probed_as_stored(
    body_settings: Settings,
) -> None:
    # A new file of known rows probes from its second batch on (SQLite: the keys are labels
    # of one JSON object, PostgreSQL: lines of one text); every key must come back unchanged.
    settings = body_settings.model_copy(update={"sync_batch_size": 10})
    dataset = f"changes_{uuid.uuid4().hex[:8]}"
    odd = ['a"b', "c\\d", "北京 ü", "e,f", "g'h", "tab\there", "😀", "[x]", "{y}", "\\u0041"]
    keys = [f"{k} {i}" for i in range(5) for k in odd]
    content = "sku,name\n" + "".join(
        '"' + k.replace('"', '""') + f'",v{i}\n' for i, k in enumerate(keys)
    )

    first = await _sync(settings, content.encode(), dataset)
    again = await _sync(settings, content.encode() + b"\n", dataset)

    assert first == {"rows_read": 50, "inserted": 50, "updated": 0, "unchanged": 0}
    assert again == {"rows_read": 50, "inserted": 0, "updated": 0, "unchanged": 50}
    assert sorted(await _records(settings, dataset)) == sorted(keys)


async def test_a_resync_reading_ahead_collects_less_then_puts_the_collector_back(
    body_settings: Settings,
) -> None:
    settings = body_settings.model_copy(update={"sync_batch_size": 100})
    dataset = f"changes_{uuid.uuid4().hex[:8]}"
    content = _csv({k: f"item {k}" for k in range(2000)})
    await _sync(settings, content, dataset)
    before = gc.get_threshold()
    assert before[0] < READ_AHEAD_GC_YOUNG  # else the raise below would go unseen
    young_seen: set[int] = set()

    async def watch() -> None:
        while True:
            young_seen.add(gc.get_threshold()[0])
            await asyncio.sleep(0)

    watcher = asyncio.ensure_future(watch())
    try:
        again = await _sync(settings, content + b"\n", dataset)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)

    assert again == {"rows_read": 2000, "inserted": 0, "updated": 0, "unchanged": 2000}
    assert max(young_seen) == max(before[0], READ_AHEAD_GC_YOUNG)
    assert gc.get_threshold() == before


async def _stored(settings: Settings, file_id: int) -> SyncFile:
    async with get_session_factory(settings)() as session:
        found = await session.get(SyncFile, file_id)
        assert found is not None
        return found


def _counting_inspect(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The stored files the pre-pass reads from now on, by path."""
    read: list[str] = []
    inspect = readers.inspect

    def counted(path: Path, fmt: str, limits: Any = None) -> readers.FileInfo:
        read.append(str(path))
        return inspect(path, fmt, limits)

    monkeypatch.setattr(readers, "inspect", counted)
    return read


async def test_a_resync_starts_from_what_the_pre_pass_found_in_the_same_bytes(
    body_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = body_settings.model_copy(update={"sync_batch_size": 100})
    dataset = f"changes_{uuid.uuid4().hex[:8]}"
    read = _counting_inspect(monkeypatch)
    file_id = await register_in_process(
        settings, _csv({k: f"item {k}" for k in range(500)}), dataset
    )

    assert (await _sync_again(settings, file_id))["inserted"] == 500
    stored = await _stored(settings, file_id)
    size = await asyncio.to_thread(os.path.getsize, stored.stored_path)
    assert read == [stored.stored_path]
    assert stored.layout is not None
    assert stored.layout | {"mtime_ns": 0, "inode": 0, "ctime_ns": 0} == {
        "version": 1, "format": "csv", "columns": ["sku", "name"], "total_rows": 500,
        "encoding": "utf-8-sig", "delimiter": ",", "size": size, "mtime_ns": 0, "inode": 0,
        "ctime_ns": 0,
    }  # fmt: skip

    again = await _sync_again(settings, file_id)

    assert again == {"rows_read": 500, "inserted": 0, "updated": 0, "unchanged": 500}
    assert read == [stored.stored_path]  # not read a second time before the rows


def _rewrite(path: Path, content: bytes, *, same_size: bool) -> None:
    before = path.stat()
    path.write_bytes(content)
    assert (path.stat().st_size == before.st_size) is same_size
    if same_size:  # and its mtime put back, as ``cp -p`` would: its ctime moved on
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize("same_size", [True, False])
async def test_a_stored_file_changed_since_its_pre_pass_is_checked_again_before_any_write(
    body_settings: Settings, monkeypatch: pytest.MonkeyPatch, same_size: bool
) -> None:
    settings = body_settings.model_copy(update={"sync_batch_size": 100})
    dataset = f"changes_{uuid.uuid4().hex[:8]}"
    rows = {k: f"item {k}" for k in range(300)}
    file_id = await register_in_process(settings, _csv(rows), dataset)
    await _sync_again(settings, file_id)
    path = Path((await _stored(settings, file_id)).stored_path)
    read = _counting_inspect(monkeypatch)

    # The header loses its key column, and a row changes: the same size and mtime, or a
    # longer file.
    changed = rows | {7: "ITEM 7" if same_size else "changed, and longer"}
    _rewrite(path, _csv(changed).replace(b"sku,", b"sko,", 1), same_size=same_size)

    with pytest.raises(BadFile, match="no key column 'sku'"):
        await _sync_again(settings, file_id)
    assert read == [str(path)]
    assert (await _records(settings, dataset)) == {f"S{k:05d}": v for k, v in rows.items()}
