"""Reading exported files as rows: CSV (UTF-8, UTF-8 with BOM, GB18030/GBK; delimiter
sniffed), JSON Lines, and XLSX (first sheet, streamed).

``inspect`` is a full pre-pass that rejects a file which is not what it claims (binary
junk, undecodable bytes, no header, a broken XLSX) *before* anything is written, so a bad
file leaves its dataset unchanged. ``iter_rows`` then streams ``(row_number, row)`` pairs;
a row that cannot be read comes as ``(row_number, reason)``. Row numbers are what a person
sees in a spreadsheet: the header is row 1.
"""

from __future__ import annotations

import codecs
import csv
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
SNIFF_BYTES = 64 * 1024
MAX_COLUMNS = 2000
MAX_FIELD_BYTES = 1 << 20
FORMATS = ("csv", "jsonl", "xlsx")
EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".xlsx": "xlsx",
}

csv.field_size_limit(MAX_FIELD_BYTES)


class BadFile(Exception):
    """The file cannot be synced at all; the message says why, for a person to read."""


Row = dict[str, Any]


@dataclass(frozen=True)
class FileInfo:
    format: str
    columns: list[str]
    total_rows: int  # data rows, for progress (an estimate for CSV with quoted newlines)
    encoding: str = "utf-8"
    delimiter: str = ","


def detect_format(name: str, head: bytes) -> str:
    by_name = EXTENSIONS.get(Path(name).suffix.lower())
    if by_name:
        return by_name
    if head.startswith(b"PK\x03\x04"):
        return "xlsx"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return "jsonl"
    return "csv"


def inspect(path: Path, fmt: str) -> FileInfo:
    if fmt == "xlsx":
        return _inspect_xlsx(path)
    encoding, lines = _text_encoding(path)
    if fmt == "jsonl":
        return _inspect_jsonl(path, encoding, lines)
    return _inspect_csv(path, encoding, lines)


def iter_rows(path: Path, info: FileInfo) -> Iterator[tuple[int, Row | str]]:
    if info.format == "xlsx":
        return _xlsx_rows(path, info)
    if info.format == "jsonl":
        return _jsonl_rows(path, info)
    return _csv_rows(path, info)


# -- text -------------------------------------------------------------------------------


def _text_encoding(path: Path) -> tuple[str, int]:
    """UTF-8 (with or without BOM) if the whole file decodes so, else GB18030 (a superset
    of GBK, what exports from Chinese platforms use); also counts the lines."""
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
    if not head.strip():
        raise BadFile("the file is empty")
    if b"\x00" in head:
        raise BadFile("the file contains binary data (NUL bytes), not text")
    for encoding in ("utf-8-sig", "gb18030"):
        decoder = codecs.getincrementaldecoder(encoding)()
        lines, offset = 0, 0
        try:
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    decoder.decode(chunk)
                    lines += chunk.count(b"\n")
                    offset += len(chunk)
                decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            if encoding == "gb18030":
                raise BadFile(
                    f"undecodable bytes near byte {offset + exc.start}: "
                    "the file is neither UTF-8 nor GB18030/GBK text"
                ) from None
            continue
        return encoding, lines
    raise AssertionError("unreachable")


def _inspect_csv(path: Path, encoding: str, lines: int) -> FileInfo:
    with path.open(encoding=encoding, newline="") as f:
        sample = f.read(SNIFF_BYTES)
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        delimiter = ","
    header = next(csv.reader(sample.splitlines(), delimiter=delimiter), [])
    columns = [c.strip() for c in header]
    _check_header(columns)
    return FileInfo("csv", columns, max(lines - 1, 0), encoding, delimiter)


def _check_header(columns: list[str]) -> None:
    if not columns or not any(columns):
        raise BadFile("there is no header row naming the columns")
    if len(columns) > MAX_COLUMNS:
        raise BadFile(f"the header has {len(columns)} columns; at most {MAX_COLUMNS} are allowed")
    if "" in columns:
        raise BadFile(f"header column {columns.index('') + 1} has no name")
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise BadFile(f"the header names a column twice: {', '.join(duplicates)}")


def _csv_rows(path: Path, info: FileInfo) -> Iterator[tuple[int, Row | str]]:
    width = len(info.columns)
    with path.open(encoding=info.encoding, newline="") as f:
        reader = csv.reader(f, delimiter=info.delimiter)
        try:
            next(reader)
        except StopIteration:
            return
        row_number = 1
        while True:
            row_number += 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield row_number, f"unreadable CSV row: {exc}"
                continue
            if not values:
                continue  # blank line
            if len(values) > width:
                yield row_number, f"{len(values)} fields, but the header names {width}"
                continue
            yield row_number, dict(zip(info.columns, values, strict=False))


def _inspect_jsonl(path: Path, encoding: str, lines: int) -> FileInfo:
    with path.open(encoding=encoding) as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except ValueError:
                    raise BadFile("the first line is not JSON: not a JSON Lines file") from None
                if not isinstance(first, dict):
                    raise BadFile("the first line is not a JSON object: not a JSON Lines file")
                return FileInfo("jsonl", [str(k) for k in first], lines, encoding)
    raise BadFile("the file has no JSON objects")


def _jsonl_rows(path: Path, info: FileInfo) -> Iterator[tuple[int, Row | str]]:
    with path.open(encoding=info.encoding) as f:
        for row_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                yield row_number, f"invalid JSON: {exc.args[0] if exc.args else exc}"
                continue
            if not isinstance(value, dict):
                yield row_number, "not a JSON object"
                continue
            yield row_number, value


# -- xlsx -------------------------------------------------------------------------------


def _open_xlsx(path: Path) -> Any:
    from openpyxl import load_workbook

    if not zipfile.is_zipfile(path):
        raise BadFile("not a readable XLSX file (it is not a zip archive; truncated?)")
    try:
        return load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:
        raise BadFile(f"not a readable XLSX file: {exc}") from None


def _inspect_xlsx(path: Path) -> FileInfo:
    workbook = _open_xlsx(path)
    try:
        if not workbook.worksheets:
            raise BadFile("the workbook has no sheets")
        sheet = workbook.worksheets[0]
        try:
            header = next(sheet.iter_rows(max_row=1, values_only=True), ())
        except Exception as exc:
            raise BadFile(f"not a readable XLSX file: {exc}") from None
        columns = [_cell_text(v) for v in header]
        while columns and columns[-1] == "":
            columns.pop()  # trailing empty header cells are formatting, not columns
        _check_header(columns)
        return FileInfo("xlsx", columns, max((sheet.max_row or 1) - 1, 0))
    finally:
        workbook.close()


def _xlsx_rows(path: Path, info: FileInfo) -> Iterator[tuple[int, Row | str]]:
    workbook = _open_xlsx(path)
    width = len(info.columns)
    try:
        sheet = workbook.worksheets[0]
        for row_number, values in enumerate(sheet.iter_rows(min_row=2, values_only=True), 2):
            if all(v is None for v in values):
                continue
            if any(v is not None for v in values[width:]):
                yield row_number, f"values beyond the {width} named columns"
                continue
            yield (
                row_number,
                {c: _cell_value(v) for c, v in zip(info.columns, values, strict=False)},
            )
    finally:
        workbook.close()


def _cell_text(value: Any) -> str:
    return "" if value is None else str(_cell_value(value)).strip()


def _cell_value(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value
