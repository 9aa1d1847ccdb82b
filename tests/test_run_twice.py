"""Every registered task body is safe to run twice.

Delivery is at least once: a body may run again after its first run committed (a worker
killed before the ledger's finish, a failed finish, an API killed during a local run).
Each case here runs a body, takes a snapshot of the whole database and of DATA_DIR, runs
the same body again with the same task id and arguments, and checks nothing was deleted,
doubled or undone and that the second run answers as the first. The cases are keyed by
task name and the registry is walked, so a new task cannot skip this test.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from backend.config import Settings
from backend.constants import TaskName
from backend.db.engine import get_engine
from backend.runtime.inprocess import run_body
from backend.runtime.registry import all_specs

CSV = b"sku,name,qty\nA1,apple,3\nB2,banana,5\nC3,,7\n,nokey,1\n"
NOW = "2026-11-24T10:00:00+00:00"

Case = Callable[[Settings], Awaitable[dict[str, Any]]]
CASES: dict[str, Case] = {}


def case(name: TaskName) -> Callable[[Case], Case]:
    def register(make_args: Case) -> Case:
        CASES[str(name)] = make_args
        return make_args

    return register


def _store(settings: Settings, content: bytes, suffix: str = ".csv") -> dict[str, Any]:
    """A file as an upload leaves it: under DATA_DIR/uploads, with its checksum."""
    uploads = settings.data_dir.resolve() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    path = uploads / f"{uuid.uuid4().hex}{suffix}"
    path.write_bytes(content)
    return {
        "stored_path": str(path),
        "original_name": f"items{suffix}",
        "size": len(content),
        "checksum": hashlib.sha256(content).hexdigest(),
    }


async def _registered_file(settings: Settings, dataset: str, content: bytes = CSV) -> int:
    args = _store(settings, content) | {"dataset": dataset, "key_columns": ["sku"]}
    run = await run_body(TaskName.REGISTER_FILE, args, settings=settings)
    return int(run.result["file_id"])


async def _synced_dataset(settings: Settings) -> tuple[str, int]:
    dataset = f"ds_{uuid.uuid4().hex[:8]}"
    file_id = await _registered_file(settings, dataset)
    await run_body(TaskName.SYNC_FILE, {"file_id": file_id}, settings=settings)
    return dataset, file_id


async def _conversation(settings: Settings) -> str:
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    for role, content in (("user", "hi"), ("assistant", "hello")):
        await run_body(
            TaskName.SAVE_CONVERSATION,
            {"session_id": session_id, "role": role, "content": content, "received_at": NOW},
            settings=settings,
        )
    return session_id


@case(TaskName.HEALTH_CHECK)
@case(TaskName.NOOP)
@case(TaskName.RECOVER)
@case(TaskName.PURGE_CONVERSATIONS)
@case(TaskName.PURGE_TASK_RUNS)
@case(TaskName.INIT_DATABASE)
@case(TaskName.LIST_FILES)
async def _no_args(settings: Settings) -> dict[str, Any]:
    await _synced_dataset(settings)  # something to list, purge or sweep past
    await _conversation(settings)
    return {}


@case(TaskName.SLEEP)
async def _sleep(settings: Settings) -> dict[str, Any]:
    return {"seconds": 0.01, "steps": 2}


@case(TaskName.FLAKY)
async def _flaky(settings: Settings) -> dict[str, Any]:
    return {"transient_failures": 0}


@case(TaskName.SAVE_CONVERSATION)
async def _save(settings: Settings) -> dict[str, Any]:
    return {"session_id": "save-twice", "role": "user", "content": "hi", "received_at": NOW}


@case(TaskName.GET_CONVERSATION_HISTORY)
@case(TaskName.DELETE_CONVERSATION_HISTORY)
async def _a_conversation(settings: Settings) -> dict[str, Any]:
    return {"session_id": await _conversation(settings)}


@case(TaskName.RUN_TURN)
async def _turn(settings: Settings) -> dict[str, Any]:
    return {"session_id": await _conversation(settings), "user_input": "again?", "received_at": NOW}


@case(TaskName.REGISTER_FILE)
async def _register(settings: Settings) -> dict[str, Any]:
    return _store(settings, CSV + uuid.uuid4().hex.encode()) | {
        "dataset": f"ds_{uuid.uuid4().hex[:8]}",
        "key_columns": ["sku"],
    }


@case(TaskName.SCAN_INBOX)
async def _inbox(settings: Settings) -> dict[str, Any]:
    folder = settings.data_dir.resolve() / "inbox" / f"ds_{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    (folder / ".keys").write_text("sku")
    dropped = folder / "items.csv"
    dropped.write_bytes(CSV + uuid.uuid4().hex.encode())
    settled = time.time() - 60
    os.utime(dropped, (settled, settled))
    return {}


@case(TaskName.SWEEP_UPLOADS)
async def _sweep(settings: Settings) -> dict[str, Any]:
    """Leftovers for the first run to remove (the age limit is the setting's: a day, so
    these stay, and what the second run must not touch is everything)."""
    uploads = settings.data_dir.resolve() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    for name in (f".partial-{uuid.uuid4().hex}", f"{uuid.uuid4().hex}.csv"):
        (uploads / name).write_bytes(b"left behind")
    await _registered_file(settings, f"ds_{uuid.uuid4().hex[:8]}", CSV + b"kept\n")
    return {}


@case(TaskName.SYNC_FILE)
async def _sync(settings: Settings) -> dict[str, Any]:
    return {"file_id": await _registered_file(settings, f"ds_{uuid.uuid4().hex[:8]}")}


@case(TaskName.FIND_FILES)
async def _find(settings: Settings) -> dict[str, Any]:
    _, file_id = await _synced_dataset(settings)
    return {"file_ids": [file_id, 999_999]}


@case(TaskName.DATASET_SUMMARY)
async def _summary(settings: Settings) -> dict[str, Any]:
    dataset, _ = await _synced_dataset(settings)
    return {"dataset": dataset}


@case(TaskName.LIST_RECORDS)
async def _records(settings: Settings) -> dict[str, Any]:
    dataset, _ = await _synced_dataset(settings)
    return {"dataset": dataset, "limit": 10, "offset": 0}


@case(TaskName.EXPORT_DATASET)
async def _export(settings: Settings) -> dict[str, Any]:
    dataset, _ = await _synced_dataset(settings)
    return {"dataset": dataset, "format": "xlsx", "encoding": "utf-8", "columns": None}


@case(TaskName.GET_EXPORT)
async def _get_export(settings: Settings) -> dict[str, Any]:
    dataset, _ = await _synced_dataset(settings)
    run = await run_body(TaskName.EXPORT_DATASET, {"dataset": dataset}, settings=settings)
    return {"export_id": run.result["export_id"]}


@case(TaskName.PURGE_EXPORTS)
async def _purge_exports(settings: Settings) -> dict[str, Any]:
    """An expired export for the first run to remove (file and row)."""
    dataset, _ = await _synced_dataset(settings)
    expiring = settings.model_copy(update={"export_retention_hours": 1e-9})
    await run_body(TaskName.EXPORT_DATASET, {"dataset": dataset}, settings=expiring)
    return {}


@case(TaskName.RUN_REPORT)
async def _report(settings: Settings) -> dict[str, Any]:
    dataset, _ = await _synced_dataset(settings)
    aggregates = [{"op": "count", "column": None}, {"op": "sum", "column": "qty"}]
    return {"dataset": dataset, "group_by": ["name"], "aggregates": aggregates}


@case(TaskName.SCHEDULED_REPORT)
async def _scheduled_report(settings: Settings) -> dict[str, Any]:
    return await _report(settings) | {"schedule": "report-twice"}


@case(TaskName.LIST_NOTIFICATIONS)
async def _notifications(settings: Settings) -> dict[str, Any]:
    return {"limit": 10}


def test_every_registered_task_has_a_run_twice_case() -> None:
    assert sorted(spec.name for spec in all_specs()) == sorted(CASES)


async def _snapshot(settings: Settings) -> dict[str, Any]:
    """Every row of every table (the ledger aside: these runs bypass it) and every file."""
    async with get_engine(settings).connect() as conn:
        tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
        rows = {}
        for table in sorted(set(tables) - {"task_runs", "alembic_version"}):
            result = await conn.execute(text(f'SELECT * FROM "{table}"'))
            rows[table] = sorted(repr(tuple(r)) for r in result)
    files = sorted(
        (str(p.relative_to(settings.data_dir)), p.read_bytes())
        for p in settings.data_dir.rglob("*")
        if p.is_file() and p.suffix != ".db" and ".db-" not in p.name
    )
    return {"rows": rows, "files": files}


@pytest.mark.parametrize("name", sorted(CASES))
async def test_a_second_run_deletes_doubles_and_undoes_nothing(
    name: str, body_settings: Settings
) -> None:
    args = await CASES[name](body_settings)
    task_id = str(uuid.uuid4())
    first = await run_body(name, args, settings=body_settings, task_id=task_id)
    after_first = await _snapshot(body_settings)

    second = await run_body(name, args, settings=body_settings, task_id=task_id)

    assert await _snapshot(body_settings) == after_first
    if name not in REPORTS_ITS_OWN_RUN:
        assert second.result == first.result


# Tasks whose result reports what that one run did (rows it deleted, files it found, the
# sweep's findings, when it ran): a second run finds the work done and says so. The state
# they leave is still checked above.
REPORTS_ITS_OWN_RUN = {
    TaskName.DELETE_CONVERSATION_HISTORY,
    TaskName.SCAN_INBOX,
    TaskName.PURGE_CONVERSATIONS,
    TaskName.PURGE_TASK_RUNS,
    TaskName.PURGE_EXPORTS,
    TaskName.RECOVER,
    TaskName.HEALTH_CHECK,
}


async def test_registering_the_same_upload_twice_keeps_the_stored_file(
    body_settings: Settings,
) -> None:
    """The bug that made CI fail at random: the second run took its own row for a
    duplicate and deleted the file that row points to."""
    args = _store(body_settings, CSV + b"Z9,zz,1\n") | {"dataset": "twice", "key_columns": ["sku"]}
    task_id = str(uuid.uuid4())
    first = await run_body(TaskName.REGISTER_FILE, args, settings=body_settings, task_id=task_id)
    second = await run_body(TaskName.REGISTER_FILE, args, settings=body_settings, task_id=task_id)

    assert second.result == first.result
    assert first.result["duplicate"] is False
    assert await asyncio.to_thread(Path(args["stored_path"]).is_file)
    synced = await run_body(
        TaskName.SYNC_FILE, {"file_id": first.result["file_id"]}, settings=body_settings
    )
    assert synced.result["inserted"] == 4


async def test_a_true_duplicate_upload_is_removed_and_answers_with_the_first_file(
    body_settings: Settings,
) -> None:
    content = CSV + b"Y8,yy,2\n"
    first_args = _store(body_settings, content) | {"dataset": "dups", "key_columns": ["sku"]}
    again_args = _store(body_settings, content) | {"dataset": "dups", "key_columns": ["sku"]}
    first = await run_body(TaskName.REGISTER_FILE, first_args, settings=body_settings)
    again = await run_body(TaskName.REGISTER_FILE, again_args, settings=body_settings)

    assert again.result["file_id"] == first.result["file_id"]
    assert again.result["duplicate"] is True
    assert await asyncio.to_thread(Path(first_args["stored_path"]).is_file)
    assert not await asyncio.to_thread(Path(again_args["stored_path"]).exists)
