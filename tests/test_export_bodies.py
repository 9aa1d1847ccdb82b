"""Export, report and purge bodies run in this process against both databases (fast):
what a file holds, formulas kept out, reports equal to the same sums in Python, expiry.
The same work through the API, with real workers, cancel and kill -9, is in
tests/test_exports.py."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from backend.config import Settings
from backend.constants import TaskName
from backend.db.engine import get_session_factory
from backend.db.queries import exports as export_queries
from backend.files import storage
from backend.runtime.inprocess import run_body
from backend.tasks.exports import ExportFailed
from backend.tasks.reports import ReportFailed
from tests.test_run_twice import _store

# A JSON number, alone or with blanks around it: what a report counts as a number.
NUMBER_GRAMMAR = r"[ \t\n\r]*-?(0|[1-9][0-9]*)([.][0-9]+)?([eE][+-]?[0-9]{1,3})?[ \t\n\r]*"


async def _dataset(settings: Settings, content: bytes, keys: list[str], suffix: str) -> str:
    dataset = f"ds_{uuid.uuid4().hex[:8]}"
    args = _store(settings, content, suffix) | {"dataset": dataset, "key_columns": keys}
    registered = await run_body(TaskName.REGISTER_FILE, args, settings=settings)
    synced = await run_body(
        TaskName.SYNC_FILE, {"file_id": registered.result["file_id"]}, settings=settings
    )
    assert synced.result["rejected"] == 0, synced.result
    return dataset


async def _export(settings: Settings, dataset: str, **args: Any) -> tuple[dict[str, Any], bytes]:
    run = await run_body(TaskName.EXPORT_DATASET, {"dataset": dataset, **args}, settings=settings)
    path = settings.data_dir.resolve() / "exports" / f"{run.result['export_id']}"
    files = list(path.parent.glob(f"{run.result['export_id']}.*"))
    assert len(files) == 1, files
    return run.result, files[0].read_bytes()


ITEMS = (
    "sku,name,qty,price,note\n"
    "A1,苹果,3,1.5,plain\n"
    'B2,香蕉,-5,2,"a, quoted""one"""\n'
    'C3,=HYPERLINK("http://x"),+7,3e2,@SUM(A1)\n'
    "D4,-2+3,abc,,#N/A\n"
    "E5,\tTAB,1e3,-0.5,=1+1\n"
).encode()


async def test_every_format_writes_the_records_in_key_order_with_formulas_as_text(
    body_settings: Settings,
) -> None:
    dataset = await _dataset(body_settings, ITEMS, ["sku"], ".csv")

    summary, raw = await _export(body_settings, dataset, format="csv", encoding="utf-8")
    assert summary["rows"] == 5 and summary["bytes"] == len(raw)
    assert summary["columns"] == ["sku", "name", "qty", "price", "note"]
    rows = list(csv.reader(io.StringIO(raw.decode())))
    assert rows[0] == ["sku", "name", "qty", "price", "note"]
    assert [r[0] for r in rows[1:]] == ["A1", "B2", "C3", "D4", "E5"]
    assert rows[2] == ["B2", "香蕉", "-5", "2", 'a, quoted"one"']  # -5 is a number: as it is
    assert rows[3] == ["C3", '\'=HYPERLINK("http://x")', "+7", "3e2", "'@SUM(A1)"]
    assert rows[4][1] == "'-2+3" and rows[5][1] == "'\tTAB" and rows[5][4] == "'=1+1"

    _, raw = await _export(body_settings, dataset, format="xlsx")
    sheet = load_workbook(io.BytesIO(raw)).active
    cells = {row[0].value: row for row in sheet.iter_rows(min_row=2)}
    for cell in (cells["C3"][1], cells["C3"][4], cells["E5"][4], cells["D4"][4]):
        assert cell.data_type == "s", (cell.value, cell.data_type)  # text, never a formula
    assert cells["C3"][1].value == '=HYPERLINK("http://x")'
    assert cells["E5"][4].value == "=1+1" and cells["D4"][4].value == "#N/A"

    _, raw = await _export(body_settings, dataset, format="jsonl", encoding="gb18030")
    lines = [json.loads(line) for line in raw.decode("gb18030").splitlines()]
    assert lines[0] == {"sku": "A1", "name": "苹果", "qty": "3", "price": "1.5", "note": "plain"}
    assert lines[3]["name"] == "-2+3"  # JSON Lines is not for spreadsheets: as it is


async def test_columns_and_filter_choose_what_is_written(body_settings: Settings) -> None:
    dataset = await _dataset(body_settings, ITEMS, ["sku"], ".csv")
    summary, raw = await _export(
        body_settings,
        dataset,
        format="csv",
        encoding="utf-8-sig",
        columns=["note", "sku"],
        filter={"price": "2"},
    )
    assert raw.startswith(b"\xef\xbb\xbf")
    assert raw.decode("utf-8-sig").splitlines() == ["note,sku", '"a, quoted""one""",B2']
    assert summary["rows"] == 1 and summary["columns"] == ["note", "sku"]
    _, raw = await _export(body_settings, dataset, format="jsonl", filter={"price": ""})
    assert [json.loads(line)["sku"] for line in raw.decode().splitlines()] == ["D4"]
    _, raw = await _export(body_settings, dataset, format="jsonl", filter={"price": None})
    assert raw == b""  # an empty CSV field is "", not a missing value


async def test_an_export_of_an_unknown_dataset_or_too_many_rows_fails_readably(
    body_settings: Settings,
) -> None:
    with pytest.raises(ExportFailed, match="no dataset named"):
        await run_body(TaskName.EXPORT_DATASET, {"dataset": "nope"}, settings=body_settings)


async def test_expired_exports_and_stray_files_are_purged(body_settings: Settings) -> None:
    dataset = await _dataset(body_settings, ITEMS, ["sku"], ".csv")
    expiring = body_settings.model_copy(update={"export_retention_hours": 1e-9})
    gone, _ = await _export(expiring, dataset)
    kept, _ = await _export(body_settings, dataset)
    exports = body_settings.data_dir.resolve() / "exports"
    stray = exports / f".partial-{uuid.uuid4()}-dead"
    stray.write_bytes(b"left by a killed run")

    purged = await run_body(TaskName.PURGE_EXPORTS, settings=body_settings)

    assert purged.result["deleted_exports"] >= 1
    assert not list(exports.glob(f"{gone['export_id']}.*"))
    assert list(exports.glob(f"{kept['export_id']}.*"))
    assert stray.exists()  # young: it may be a live run's
    described = await run_body(
        TaskName.GET_EXPORT, {"export_id": gone["export_id"]}, settings=body_settings
    )
    assert described.result is None
    old = 1_000_000_000
    os.utime(stray, (old, old))
    await run_body(TaskName.PURGE_EXPORTS, settings=body_settings)
    assert not stray.exists()
    assert list(exports.glob(f"{kept['export_id']}.*"))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and re.fullmatch(NUMBER_GRAMMAR, value):
        return float(value)
    return None


def _python_report(records: list[dict[str, Any]], group_by: list[str]) -> dict[tuple, list]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        key = tuple(None if r.get(c) in (None,) else str(r.get(c)) for c in group_by)
        groups.setdefault(key, []).append(r)
    out = {}
    for key, members in groups.items():
        qty = [n for n in (_number(m.get("qty")) for m in members) if n is not None]
        price = [n for n in (_number(m.get("price")) for m in members) if n is not None]
        out[key] = [
            len(members),
            sum(1 for m in members if m.get("qty") is not None),
            sum(qty) if qty else None,
            min(qty) if qty else None,
            max(qty) if qty else None,
            sum(price) / len(price) if price else None,
        ]
    return out


AGGREGATES = [
    {"op": "count"},
    {"op": "count", "column": "qty"},
    {"op": "sum", "column": "qty"},
    {"op": "min", "column": "qty"},
    {"op": "max", "column": "qty"},
    {"op": "avg", "column": "price"},
]


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


async def test_a_report_equals_the_same_aggregation_in_python(body_settings: Settings) -> None:
    lines, records = [], []
    regions = ["north", "south", "east", "西"]
    for i in range(2000):
        record = {
            "id": str(i),
            "region": regions[i % 4],
            "kind": ["a", "b", "c"][i % 3],
            "qty": [str(i % 17), f" {i % 5} ", "n/a", "", f"{i}.25", "-3", "1e2", "03", "1e999999"][
                i % 9
            ],
            "price": (i * 7) % 100 / 4 if i % 9 else "free",
        }
        if i % 11 == 0:
            del record["qty"]  # missing: null, not counted
        records.append(record)
        lines.append(json.dumps(record, ensure_ascii=False))
    content = ("\n".join(lines) + "\n").encode()
    dataset = await _dataset(body_settings, content, ["id"], ".jsonl")

    for group_by in (["region", "kind"], ["region"], []):
        run = await run_body(
            TaskName.RUN_REPORT,
            {"dataset": dataset, "group_by": group_by, "aggregates": AGGREGATES},
            settings=body_settings,
        )
        report = run.result
        assert report["columns"] == [
            *group_by, "count", "count(qty)", "sum(qty)", "min(qty)", "max(qty)", "avg(price)"
        ]  # fmt: skip
        expected = _python_report(records, group_by)
        got = {tuple(row[: len(group_by)]): row[len(group_by) :] for row in report["rows"]}
        assert set(got) == set(expected)
        for key, numbers in expected.items():
            assert all(_close(a, b) for a, b in zip(got[key], numbers, strict=True)), (
                key, got[key], numbers,
            )  # fmt: skip
        assert report["groups"] == len(expected)
        assert [row[: len(group_by)] for row in report["rows"]] == sorted(
            row[: len(group_by)] for row in report["rows"]
        )


async def test_a_report_of_too_many_groups_or_no_dataset_fails_readably(
    body_settings: Settings,
) -> None:
    dataset = await _dataset(body_settings, ITEMS, ["sku"], ".csv")
    few = body_settings.model_copy(update={"report_max_groups": 3})
    with pytest.raises(ReportFailed, match="more than 3 groups"):
        await run_body(
            TaskName.RUN_REPORT,
            {"dataset": dataset, "group_by": ["sku"], "aggregates": [{"op": "count"}]},
            settings=few,
        )
    with pytest.raises(ReportFailed, match="no dataset"):
        await run_body(
            TaskName.RUN_REPORT,
            {"dataset": "nope", "group_by": [], "aggregates": [{"op": "count"}]},
            settings=body_settings,
        )


async def test_a_report_fails_as_soon_as_its_groups_pass_the_result_limit(
    body_settings: Settings,
) -> None:
    """A group value can be a whole long field: the groups are measured as they are read,
    not after the worker has loaded every one of them."""
    rows = "".join(f"k{i},{'x' * 3000}{i}\n" for i in range(50))
    dataset = await _dataset(body_settings, f"sku,note\n{rows}".encode(), ["sku"], ".csv")
    small = body_settings.model_copy(update={"max_result_bytes": 10_000})
    with pytest.raises(ReportFailed, match=r"passes 10,000 bytes .* by its group 4:"):
        await run_body(
            TaskName.RUN_REPORT,
            {"dataset": dataset, "group_by": ["note"], "aggregates": [{"op": "count"}]},
            settings=small,
        )


def test_the_path_helper_is_not_confused(tmp_path: Path) -> None:
    assert storage.export_id_of(tmp_path / "abc-1.csv") == "abc-1"
    assert storage.export_id_of(tmp_path / ".partial-abc-1-ff") is None


async def test_the_purge_asks_after_any_number_of_export_files(body_settings: Settings) -> None:
    """A day's exports can pass the drivers' limit on bound parameters (asyncpg's 32,767;
    SQLite's depends on its build): the stray-file check asks in batches."""
    async with get_session_factory(body_settings)() as session:
        ids = [str(uuid.uuid4()) for _ in range(40_000)]
        assert await export_queries.known_ids(session, ids=ids) == set()
