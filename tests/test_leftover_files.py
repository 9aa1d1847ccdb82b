"""Nothing is left on disk that no registration owns, and the inbox loses nothing (issue 13).

- The inbox scan registers a file before it leaves the inbox: a scan that fails half-way
  leaves the file where it was and no stored copy; two scans at once register each file
  once; a folder whose name is not a dataset name has its files rejected, not registered.
- An upload whose registration is refused (422) is removed at once.
- The upload sweep removes old ``.partial-`` files and old stored files no row points at,
  and keeps registered and young ones.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError

from backend.config import Settings
from backend.constants import TaskName
from backend.db.engine import get_session_factory
from backend.db.models import SyncFile
from backend.files.readers import BadFile
from backend.runtime import ledger
from backend.runtime.inprocess import run_body
from tests.conftest import StartWorker
from tests.helpers import wait_final

CSV = b"sku,qty\nA,1\nB,2\n"


def _uploads(settings: Settings) -> set[Path]:
    directory = settings.data_dir.resolve() / "uploads"
    return set(directory.iterdir()) if directory.is_dir() else set()


async def _stored_paths(settings: Settings) -> set[Path]:
    async with get_session_factory(settings)() as session:
        return {Path(p) for p in await session.scalars(select(SyncFile.stored_path))}


def _drop(settings: Settings, folder: str, files: dict[str, bytes]) -> Path:
    """Files in the inbox as a writer leaves them, settled (older than the settle time)."""
    directory = settings.data_dir.resolve() / "inbox" / folder
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ".keys").write_text("sku")
    settled = time.time() - 60
    for name, content in files.items():
        (directory / name).write_bytes(content)
        os.utime(directory / name, (settled, settled))
    return directory


@contextmanager
def failing_file_inserts(settings: Settings) -> Iterator[None]:
    """The database refuses to record a file (a fault, not the file's fault)."""
    engine = ledger.engine_of(get_session_factory(settings)).sync_engine

    def refuse(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().startswith("INSERT INTO sync_files"):
            raise OperationalError(statement, None, Exception("disk I/O error"))

    event.listen(engine, "before_cursor_execute", refuse)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", refuse)


async def test_a_scan_that_cannot_register_leaves_the_file_in_the_inbox_and_no_copy(
    body_settings: Settings,
) -> None:
    dataset = f"inbox_{uuid.uuid4().hex[:8]}"
    folder = _drop(body_settings, dataset, {"items.csv": CSV + dataset.encode()})
    before = _uploads(body_settings)

    with failing_file_inserts(body_settings), pytest.raises(OperationalError):
        await run_body(TaskName.SCAN_INBOX, settings=body_settings)

    assert (folder / "items.csv").is_file()
    assert _uploads(body_settings) == before

    report = (await run_body(TaskName.SCAN_INBOX, settings=body_settings)).result
    assert [r["name"] for r in report["registered"]] == ["items.csv"]
    assert not (folder / "items.csv").exists()
    added = _uploads(body_settings) - before
    assert len(added) == 1 and added <= await _stored_paths(body_settings)


async def test_two_scans_at_once_register_each_file_once_and_leave_no_copy(
    body_settings: Settings,
) -> None:
    dataset = f"inbox_{uuid.uuid4().hex[:8]}"
    names = [f"part{i}.csv" for i in range(8)]
    folder = _drop(body_settings, dataset, {n: CSV + n.encode() + dataset.encode() for n in names})
    before = _uploads(body_settings)

    first, second = await asyncio.gather(
        run_body(TaskName.SCAN_INBOX, settings=body_settings),
        run_body(TaskName.SCAN_INBOX, settings=body_settings),
    )

    seen = [
        r["name"]
        for run in (first, second)
        for bucket in ("registered", "duplicates")
        for r in run.result[bucket]
    ]
    registered = [r["name"] for run in (first, second) for r in run.result["registered"]]
    assert sorted(registered) == names  # each once, by one scan or the other
    assert set(seen) == set(names)
    assert not [p for p in folder.iterdir() if not p.name.startswith(".")]
    added = _uploads(body_settings) - before
    assert len(added) == len(names) and added <= await _stored_paths(body_settings)


async def test_files_in_a_folder_that_is_not_a_dataset_name_are_rejected(
    body_settings: Settings,
) -> None:
    folder = _drop(body_settings, "not a dataset!", {"items.csv": CSV})
    before = _uploads(body_settings)

    report = (await run_body(TaskName.SCAN_INBOX, settings=body_settings)).result

    rejected = [r for r in report["rejected"] if r["name"] == "items.csv"]
    assert rejected and "not a dataset name" in rejected[0]["reason"]
    assert (folder / ".rejected" / "items.csv").is_file()
    assert _uploads(body_settings) == before


async def test_a_refused_registration_removes_its_upload(body_settings: Settings) -> None:
    uploads = body_settings.data_dir.resolve() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    stored = uploads / f"{uuid.uuid4().hex}.csv"
    stored.write_bytes(CSV)
    args = {
        "stored_path": str(stored),
        "original_name": "items.csv",
        "size": len(CSV),
        "checksum": uuid.uuid4().hex,
        "dataset": f"new_{uuid.uuid4().hex[:8]}",
        "key_columns": [],  # a new dataset needs them
    }

    for _ in range(2):  # and again, as a redelivery would
        with pytest.raises(BadFile):
            await run_body(TaskName.REGISTER_FILE, args, settings=body_settings)
        assert not stored.exists()


async def test_the_sweep_removes_old_leftovers_and_keeps_registered_and_young_files(
    body_settings: Settings,
) -> None:
    """Age is when a file last changed or got its name (a test cannot backdate that), so
    the age limit here is a second rather than a day."""
    settings = body_settings.model_copy(update={"upload_sweep_age_seconds": 1.0})
    uploads = settings.data_dir.resolve() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)

    def leftover(name: str) -> Path:
        path = uploads / name
        path.write_bytes(b"nobody's")
        return path

    dataset = f"kept_{uuid.uuid4().hex[:8]}"
    _drop(settings, dataset, {"items.csv": CSV + dataset.encode()})
    await run_body(TaskName.SCAN_INBOX, settings=settings)
    registered = await _stored_paths(settings)
    old_partial = leftover(f".partial-{uuid.uuid4().hex}")
    old_orphan = leftover(f"{uuid.uuid4().hex}.csv")
    await asyncio.sleep(1.2)
    young_orphan = leftover(f"{uuid.uuid4().hex}.csv")
    young_partial = leftover(f".partial-{uuid.uuid4().hex}")

    report = (await run_body(TaskName.SWEEP_UPLOADS, settings=settings)).result

    assert report["deleted_partials"] >= 1 and report["deleted_unreferenced"] >= 1
    assert not old_partial.exists() and not old_orphan.exists()
    assert young_orphan.exists() and young_partial.exists()
    assert registered and all(p.exists() for p in registered)


def test_an_upload_refused_by_its_registration_leaves_nothing_in_uploads(
    client: httpx.Client, start_worker: StartWorker, stack_env: dict[str, str]
) -> None:
    start_worker()
    uploads = Path(stack_env["DATA_DIR"]).resolve() / "uploads"
    before = set(uploads.iterdir()) if uploads.is_dir() else set()

    response = client.post(
        "/api/data-sync/files",
        files={"file": ("items.csv", CSV + uuid.uuid4().hex.encode(), "text/csv")},
        data={"dataset": f"new-{uuid.uuid4().hex[:8]}"},  # new, and no key columns
    )

    if response.status_code == 202:  # a busy worker: the refusal lands in the task
        assert wait_final(client, response.json()["task_id"])["state"] == "FAILURE"
    else:
        assert response.status_code == 422, response.text
    assert set(uploads.iterdir()) == before
