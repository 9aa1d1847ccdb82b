"""Hostile workbooks (issue 13). A workbook is a zip of XML: what it unpacks to, and what
it declares, is not what it weighs. Each one here ends its sync within seconds, with a
reason, costs the worker (its whole process tree, the reader included) under 100 MB, and
the worker goes on serving.

- A shared-strings bomb, 84 KB that unpacks to 34 MB (1.9 million strings, hundreds of MB
  as Python objects), is refused from the zip's directory before it is opened.
- A 1.5 KB sheet declaring A1:XFD1048576 (17 billion cells, its one stray empty cell at
  XFD1048576) is refused for its forged dimension. The same stray cell without the
  declaration reads as the one row the sheet holds: the million rows it skips cost an
  empty step each, not 16,384 cells each.
- A sheet whose rows run past Excel's last fails, where openpyxl would count up to them
  one empty row at a time.
- With the archive check relaxed, the bomb reaches openpyxl, in a child process whose time
  limit ends it: the parse stops, not just the wait for it.
- With Redis down the sync runs in the API process; the bomb, the forged dimension and the
  rows past Excel's last fail there just as quickly.

At unit level: the archive check, the reader's memory and time limits, what a normal
workbook reads as, and no temporary file left behind.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import io
import os
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from backend.config import Settings
from backend.files import readers, xlsx
from backend.files.readers import BadFile, XlsxLimits
from tests.conftest import StartWorker
from tests.helpers import wait_final, wait_state
from tests.support import Api, RedisServer, wait_for
from tests.test_data_sync import dataset_info, new_dataset, register, sync
from tests.test_resource_bounds import RssSampler

MB = 1 << 20
GROWTH_LIMIT = 100 * MB
SECONDS_LIMIT = 10.0

# -- workbooks written by hand (openpyxl writes inline strings and true dimensions) -------

MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
DOC_RELS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PKG_RELS = "http://schemas.openxmlformats.org/package/2006/relationships"
SML = "application/vnd.openxmlformats-officedocument.spreadsheetml"
BOMB_STRINGS = 1_900_000  # "ab" each: 34 MB of XML, 84 KB zipped


# The shared strings table's content: (head, body, how many times the body repeats, tail),
# streamed into the zip rather than built whole.
Repeated = tuple[bytes, bytes, int, bytes]


def workbook(
    sheet_data: str,
    *,
    dimension: str | None,
    shared_strings: Repeated | None = None,
    level: int = 9,
) -> bytes:
    """A one-sheet XLSX, its parts written as the test needs them (``dimension`` None: the
    sheet declares none, as some writers do)."""
    overrides = (
        f'<Override PartName="/xl/workbook.xml" ContentType="{SML}.sheet.main+xml"/>'
        f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{SML}.worksheet+xml"/>'
    )
    rels = f'<Relationship Id="rId1" Type="{DOC_RELS}/worksheet" Target="worksheets/sheet1.xml"/>'
    if shared_strings is not None:
        overrides += (
            f'<Override PartName="/xl/sharedStrings.xml" ContentType="{SML}.sharedStrings+xml"/>'
        )
        rels += (
            f'<Relationship Id="rId2" Type="{DOC_RELS}/sharedStrings" Target="sharedStrings.xml"/>'
        )
    parts = {
        "[Content_Types].xml": (
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" '
            'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            f'<Default Extension="xml" ContentType="application/xml"/>{overrides}</Types>'
        ),
        "_rels/.rels": (
            f'<Relationships xmlns="{PKG_RELS}"><Relationship Id="rId1" '
            f'Type="{DOC_RELS}/officeDocument" Target="xl/workbook.xml"/></Relationships>'
        ),
        "xl/workbook.xml": (
            f'<workbook xmlns="{MAIN}" xmlns:r="{DOC_RELS}"><sheets>'
            '<sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'
        ),
        "xl/_rels/workbook.xml.rels": f'<Relationships xmlns="{PKG_RELS}">{rels}</Relationships>',
        "xl/worksheets/sheet1.xml": (
            f'<worksheet xmlns="{MAIN}">'
            + (f'<dimension ref="{dimension}"/>' if dimension else "")
            + f"<sheetData>{sheet_data}</sheetData></worksheet>"
        ),
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        for name, text in parts.items():
            archive.writestr(name, text)
        if shared_strings is not None:
            head, body, times, tail = shared_strings
            with archive.open("xl/sharedStrings.xml", "w") as f:
                f.write(f'<sst xmlns="{MAIN}">'.encode() + head)
                batch = max(1, MB // max(len(body), 1))  # whole bodies, about 1 MB a write
                for done in range(0, times, batch):
                    f.write(body * min(batch, times - done))
                f.write(tail + b"</sst>")
    return out.getvalue()


def inline(ref: str, text: str) -> str:
    return f'<c r="{ref}" t="inlineStr"><is><t>{text}</t></is></c>'


HEADER_AND_ONE_ROW = (
    f'<row r="1">{inline("A1", "order_id")}{inline("B1", "item")}</row>'
    f'<row r="2"><c r="A2"><v>1</v></c>{inline("B2", "apple")}</row>'
)


@functools.cache
def shared_strings_bomb() -> bytes:
    sheet = (
        '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c></row>'
        '<row r="2"><c r="A2"><v>1</v></c><c r="B2" t="s"><v>2</v></c></row>'
    )
    head = b"<si><t>order_id</t></si><si><t>item</t></si><si><t>apple</t></si>"
    strings = (head, b"<si><t>ab</t></si>", BOMB_STRINGS, b"")
    return workbook(sheet, dimension="A1:B2", shared_strings=strings)


def declared_a_million_rows() -> bytes:
    stray = '<row r="1048576"><c r="XFD1048576"/></row>'
    return workbook(HEADER_AND_ONE_ROW + stray, dimension="A1:XFD1048576")


def a_stray_cell_at_the_last_row() -> bytes:
    stray = '<row r="1048576"><c r="XFD1048576"/></row>'
    return workbook(HEADER_AND_ONE_ROW + stray, dimension=None)


def rows_past_excel() -> bytes:
    far = '<row r="2147483647"><c r="A2147483647"><v>3</v></c></row>'
    return workbook(HEADER_AND_ONE_ROW + far, dimension=None)


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.xlsx"
    path.write_bytes(shared_strings_bomb())
    return path


def test_the_bomb_is_the_one_in_the_issue(bomb: Path) -> None:
    with zipfile.ZipFile(bomb) as archive:
        unpacked = sum(m.file_size for m in archive.infolist())
    assert bomb.stat().st_size < 90_000 and unpacked > 34_000_000
    assert len(declared_a_million_rows()) < 1600


# -- unit level: the archive check and the reader process -----------------------------------


def test_the_archive_check_refuses_a_bomb_from_the_zip_directory_alone(
    bomb: Path, tmp_path: Path
) -> None:
    with pytest.raises(BadFile, match=r"sharedStrings.xml unpacks to 34,2\d\d,\d{3} bytes from"):
        xlsx.check_archive(bomb, XlsxLimits())
    with pytest.raises(BadFile, match="unpacks to more than 10,485,760 bytes"):
        xlsx.check_archive(bomb, XlsxLimits(max_compression_ratio=1000, max_unpacked_bytes=10 * MB))
    xlsx.check_archive(bomb, XlsxLimits(max_compression_ratio=1000))

    # A small member may compress as well as it likes: it cannot cost much.
    small = tmp_path / "small.xlsx"
    empty_strings = (b"", b"<si/>", 100_000, b"")  # 500 KB, a thousand times compressed
    small.write_bytes(workbook(HEADER_AND_ONE_ROW, dimension="A1:B2", shared_strings=empty_strings))
    xlsx.check_archive(small, XlsxLimits())

    junk = tmp_path / "junk.xlsx"
    junk.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(BadFile, match="not a zip archive"):
        xlsx.check_archive(junk, XlsxLimits())


def test_the_reader_process_is_held_to_its_memory_limit(tmp_path: Path) -> None:
    """With the archive check relaxed, a 0.7 MB workbook whose one shared string is 160 MB
    reaches openpyxl; the reader dies at its memory limit, and its caller does not grow."""
    path = tmp_path / "big-string.xlsx"
    sheet = '<row r="1"><c r="A1" t="s"><v>0</v></c></row>'
    huge = (b"<si><t>", b"a" * MB, 160, b"</t></si>")
    path.write_bytes(workbook(sheet, dimension="A1", shared_strings=huge, level=1))
    limits = XlsxLimits(
        max_compression_ratio=1e9, max_unpacked_bytes=1 << 30, parse_memory_bytes=128 * MB
    )
    me = psutil.Process()
    before = me.memory_info().rss

    started = time.monotonic()
    with pytest.raises(BadFile, match="too large to parse: reading it needs more than 128 MB"):
        readers.inspect(path, "xlsx", limits)

    assert time.monotonic() - started < SECONDS_LIMIT
    assert me.memory_info().rss - before < 20 * MB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big-string.xlsx"]


def test_the_reader_process_is_held_to_its_time_limit(bomb: Path) -> None:
    """Past a relaxed archive check the bomb takes openpyxl half a minute; the reader is
    stopped at its limit, and nothing of it is left running."""
    limits = XlsxLimits(max_compression_ratio=1e9, parse_seconds=1)

    started = time.monotonic()
    with pytest.raises(BadFile, match="too large to parse: reading it took more than 1 s"):
        readers.inspect(bomb, "xlsx", limits)

    assert time.monotonic() - started < 1 + xlsx.GRACE_SECONDS + 2
    assert not _readers_under(psutil.Process())
    assert sorted(p.name for p in bomb.parent.iterdir()) == ["bomb.xlsx"]


def test_a_normal_workbook_reads_as_before_and_its_spool_goes_with_its_info(
    tmp_path: Path,
) -> None:
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.append(["order_id", "when", "price", "note", None])
    sheet.append([1, datetime(2024, 1, 2, 3, 4, 5), Decimal("1.50"), "café 订单"])
    sheet.append([None, None, None, None])
    sheet.append([3, None, 2.5])
    sheet.append([4, None, None, None, None, "beyond"])
    path = tmp_path / "normal.xlsx"
    book.save(path)

    info = readers.inspect(path, "xlsx", XlsxLimits())
    rows = list(readers.iter_rows(path, info))

    assert (info.columns, info.total_rows) == (["order_id", "when", "price", "note"], 3)
    assert rows == [  # in the header's order, as wide as the header
        (2, [1, "2024-01-02T03:04:05", 1.5, "café 订单"]),
        (4, [3, None, 2.5, None]),
        (5, "values beyond the 4 named columns"),
    ]
    assert list(readers.iter_rows(path, info)) == rows  # each reading starts over
    spool = info.spool
    assert spool is not None and not spool.closed
    del info
    gc.collect()
    assert spool.closed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["normal.xlsx"]


def test_a_dimension_smaller_than_the_sheet_no_longer_hides_its_rows(tmp_path: Path) -> None:
    """Some writers declare A1 whatever the sheet holds; openpyxl believed it and read
    nothing past the first cell."""
    path = tmp_path / "a1.xlsx"
    path.write_bytes(workbook(HEADER_AND_ONE_ROW, dimension="A1"))
    info = readers.inspect(path, "xlsx", XlsxLimits())
    assert info.columns == ["order_id", "item"]
    assert list(readers.iter_rows(path, info)) == [(2, [1, "apple"])]


def test_a_stray_cell_at_the_last_row_costs_an_empty_step_per_skipped_row(
    tmp_path: Path,
) -> None:
    path = tmp_path / "stray.xlsx"
    path.write_bytes(a_stray_cell_at_the_last_row())
    started = time.monotonic()
    info = readers.inspect(path, "xlsx", XlsxLimits())
    assert info.columns == ["order_id", "item"]
    assert list(readers.iter_rows(path, info)) == [(2, [1, "apple"])]
    assert time.monotonic() - started < 10


def test_a_declared_size_past_the_limit_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "declared.xlsx"
    path.write_bytes(workbook(HEADER_AND_ONE_ROW, dimension="A1:J1000"))
    assert readers.inspect(path, "xlsx", XlsxLimits()).total_rows == 1
    with pytest.raises(BadFile, match="declares A1:J1000 \\(10,000 cells\\)"):
        readers.inspect(path, "xlsx", XlsxLimits(max_unpacked_bytes=9_999))


def test_the_limits_default_to_the_settings_defaults() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert XlsxLimits.of(settings) == XlsxLimits()


# -- through the stack ------------------------------------------------------------------------


HOSTILE: dict[str, tuple[Callable[[], bytes], str, str]] = {
    "shared_strings_bomb": (shared_strings_bomb, "FAILURE", "412 times its size"),
    "declared_a_million_rows": (declared_a_million_rows, "FAILURE", "declares A1:XFD1048576"),
    "rows_past_excel": (rows_past_excel, "FAILURE", "rows past row 1,048,576"),
}


def _readers_under(root: psutil.Process) -> list[psutil.Process]:
    """The XLSX reader processes still running below ``root``."""
    found = []
    for p in root.children(recursive=True):
        try:
            if xlsx.CHILD_MODULE in " ".join(p.cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def _temporary_files(stack_env: dict[str, str]) -> list[str]:
    uploads = Path(stack_env["DATA_DIR"]).resolve() / "uploads"
    return [p.name for p in uploads.iterdir() if p.name.startswith(".xlsx-")]


def _sync_measured(
    client: httpx.Client, content: bytes, dataset: str, name: str, roots: dict[str, int]
) -> tuple[dict[str, Any], float, RssSampler]:
    """Register, then sync and wait, sampling the memory of ``roots`` meanwhile; the XLSX
    reader processes below them apart (``"<root> apart"``, in the report only): a reader's
    memory has a limit of its own (RLIMIT_AS), which
    ``test_the_reader_process_is_held_to_its_memory_limit`` checks."""
    f = register(client, content, dataset, name=name)
    with RssSampler(roots, apart=xlsx.CHILD_MODULE) as rss:
        started = time.monotonic()
        done = wait_final(client, sync(client, f["file_id"])["task_id"], timeout=60)
        elapsed = time.monotonic() - started
    return done, elapsed, rss


def _serves_a_normal_sync(client: httpx.Client, dataset: str, order_id: int) -> None:
    f = register(client, f"order_id,item\n{order_id},pear\n".encode(), dataset, name="after.csv")
    done = wait_state(client, sync(client, f["file_id"])["task_id"], "SUCCESS")
    assert done["result"]["inserted"] == 1


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_workbook_ends_fast_in_bounded_memory_and_the_worker_keeps_serving(
    client: httpx.Client,
    start_worker: StartWorker,
    stack_env: dict[str, str],
    kind: str,
    record_property: Any,
) -> None:
    worker = start_worker()
    assert worker.proc is not None
    dataset = new_dataset()
    _serves_a_normal_sync(client, dataset, 100)  # warm: the baseline is a working worker
    build, state, reason = HOSTILE[kind]
    content = build()

    done, elapsed, rss = _sync_measured(
        client, content, dataset, f"{kind}.xlsx", {"worker": worker.proc.pid}
    )
    record_property("cost", f"{elapsed:.1f} s, {rss.report()}")
    print(f"\n{kind} ({len(content):,} bytes): {elapsed:.1f} s, {rss.report()}")

    assert done["state"] == state, done
    if state == "FAILURE":
        assert done["error"]["type"] == "BadFile", done["error"]
        assert reason in done["error"]["message"], done["error"]
        assert dataset_info(client, dataset)["record_count"] == 1  # a bad file changes nothing
    else:
        assert (done["result"]["rows_read"], done["result"]["inserted"]) == (1, 1), done
    assert elapsed < SECONDS_LIMIT
    assert rss.growth()["worker"] < GROWTH_LIMIT, rss.report()
    assert worker.alive and not _readers_under(psutil.Process(worker.proc.pid))
    assert not _temporary_files(stack_env)
    _serves_a_normal_sync(client, dataset, 101)


def test_after_hostile_uploads_the_uploads_folder_holds_only_registered_files(
    client: httpx.Client, start_worker: StartWorker, stack_env: dict[str, str]
) -> None:
    """Every hostile workbook, a refused registration and a duplicate upload, each synced
    to its end: what they added to ``DATA_DIR/uploads`` is exactly the files registered
    (no reader spool, no half-written copy, no refused or duplicate upload)."""
    start_worker()
    uploads = Path(stack_env["DATA_DIR"]).resolve() / "uploads"

    def listed() -> set[str]:
        return set(os.listdir(uploads)) if uploads.is_dir() else set()

    before = listed()
    dataset = new_dataset()
    sent: dict[str, bytes] = {}
    for kind, (build, state, _) in HOSTILE.items():
        sent[kind] = build()
        f = register(client, sent[kind], dataset, name=f"{kind}.xlsx")
        done = wait_final(client, sync(client, f["file_id"])["task_id"], timeout=60)
        assert done["state"] == state, done
    duplicate = register(client, sent["declared_a_million_rows"], dataset, name="again.xlsx")
    assert duplicate["duplicate"], duplicate
    refused = client.post(
        "/api/data-sync/files",
        files={"file": ("new.csv", io.BytesIO(b"order_id\n1\n"), "text/csv")},
        data={"dataset": new_dataset()},  # a new dataset without its key columns: 422
    )
    assert refused.status_code == 422, refused.text

    added = listed() - before
    registered = {f["checksum"] for f in dataset_info(client, dataset)["files"]}
    assert len(registered) == len(HOSTILE)
    assert {hashlib.sha256((uploads / n).read_bytes()).hexdigest() for n in added} == registered
    assert len(added) == len(registered), sorted(added)


def test_past_a_relaxed_archive_check_the_time_limit_stops_the_parse_itself(
    client: httpx.Client, start_worker: StartWorker, stack_env: dict[str, str]
) -> None:
    """The bomb reaches openpyxl (half a minute of parsing) and is stopped at 3 s: the
    reader process is gone, not left running behind a cancelled await."""
    worker = start_worker(env={"XLSX_MAX_COMPRESSION_RATIO": "1000000", "XLSX_PARSE_SECONDS": "3"})
    assert worker.proc is not None
    dataset = new_dataset()
    _serves_a_normal_sync(client, dataset, 100)

    done, elapsed, rss = _sync_measured(
        client, shared_strings_bomb(), dataset, "bomb.xlsx", {"worker": worker.proc.pid}
    )
    print(f"\nrelaxed bomb: {elapsed:.1f} s, {rss.report()}")

    assert done["state"] == "FAILURE", done
    assert "reading it took more than 3 s" in done["error"]["message"], done["error"]
    assert elapsed < SECONDS_LIMIT
    assert rss.growth()["worker"] < GROWTH_LIMIT, rss.report()
    assert worker.alive and not _readers_under(psutil.Process(worker.proc.pid))
    assert not _temporary_files(stack_env)
    _serves_a_normal_sync(client, dataset, 101)


@pytest.mark.slow
def test_with_redis_down_hostile_workbooks_fail_in_the_api_process_without_growing_it(
    client: httpx.Client, api: Api, redis_up: RedisServer
) -> None:
    assert api.proc is not None
    dataset = new_dataset()
    redis_up.kill()
    wait_for(lambda: client.get("/health").json()["broker"] == "down", 5, what="broker down")
    _serves_a_normal_sync(client, dataset, 100)

    for kind in ("shared_strings_bomb", "declared_a_million_rows", "rows_past_excel"):
        build, state, reason = HOSTILE[kind]
        done, elapsed, rss = _sync_measured(
            client, build(), dataset, f"{kind}.xlsx", {"api": api.proc.pid}
        )
        print(f"\n{kind}, local executor: {elapsed:.1f} s, {rss.report()}")
        assert (done["state"], done["executor"]) == (state, "local"), done
        assert reason in done["error"]["message"], done["error"]
        assert elapsed < SECONDS_LIMIT
        assert rss.growth()["api"] < GROWTH_LIMIT, rss.report()

    assert not _readers_under(psutil.Process(api.proc.pid))
    _serves_a_normal_sync(client, dataset, 101)


@pytest.fixture(autouse=True)
def _no_reader_left_in_this_process() -> Iterator[None]:
    yield
    assert not _readers_under(psutil.Process())
