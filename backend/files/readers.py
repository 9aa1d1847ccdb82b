"""Reading exported files as rows: CSV (UTF-8, UTF-8 with BOM, GB18030/GBK; delimiter
sniffed), JSON Lines, and XLSX (first sheet, converted by a child process held to
XlsxLimits: see backend/files/xlsx.py).

``inspect`` is a full pre-pass that rejects a file which is not what it claims (binary
junk, undecodable bytes, no header, a broken XLSX) *before* anything is written, so a bad
file leaves its dataset unchanged. ``iter_rows`` then streams ``(row_number, row)`` pairs;
a row that cannot be read comes as ``(row_number, reason)``. Row numbers are what a person
sees in a spreadsheet: the header is row 1.

Memory stays bounded whatever the file holds: text is read line by line, and a line
longer than MAX_ROW_CHARS (MAX_HEADER_CHARS for a header) is never held whole; it is
skipped in chunks and becomes a rejected row (or, as a header, a bad file). A field is at
most MAX_FIELD_BYTES, and a header at most MAX_COLUMNS wide. A workbook can cost what its
XlsxLimits allow and no more, whatever it unpacks to or declares.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

import orjson

from backend.files import xlsx
from backend.files.bounds import (
    MAX_COLUMNS,
    MAX_FIELD_BYTES,
    MAX_HEADER_CHARS,
    MAX_ROW_CHARS,
    BadFile,
    XlsxLimits,
    check_header,
)

__all__ = ["BadFile", "FileInfo", "Row", "XlsxLimits", "detect_format", "inspect", "iter_rows"]

CHUNK = 1 << 20
SNIFF_BYTES = 64 * 1024
# csv.Sniffer's cost is per line sampled: 64 KB of a 10-column file (650 lines) took
# 0.22 s, three quarters of a 300,000-row file's whole pre-pass; 40 lines tell as much.
SNIFF_LINES = 40
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


def _not_json(name: str) -> Any:
    """NaN and Infinity: Python's json reads them, but they are not JSON, and a record
    holding one could not be stored as JSON (PostgreSQL refuses it) or read back."""
    raise ValueError(f"{name} is not a JSON value")


# One decoder for every line: ``json.loads(line, parse_constant=...)`` builds a decoder
# per call, 3.7 us a line against 2.0 us (timeit, a 10-key line).
_JSON_LINE = json.JSONDecoder(parse_constant=_not_json)
# orjson makes an integer past 64 bits a float; json keeps it whole.
_LONG_NUMBER = re.compile(r"[0-9]{19}")
_LONG_NUMBER_BYTES = re.compile(rb"[0-9]{19}")
_EXACT = frozenset({str, int, bool, type(None)})
# orjson reads 1,024 levels of nesting, json about 990 (Python's recursion limit): a line
# with this many brackets goes to json, which rejects it or reads it as before.
_MANY_BRACKETS = 255
# Built on serde_json rather than yyjson, orjson reads -0 as a float (json: the integer 0).
_FLOATS_AS_JSON = type(orjson.loads("-0")) is int


def _json_line(line: str) -> Any:
    """A line's value as ``json`` reads it, by orjson where the two agree: bench_sync.py's
    ten-key lines, this function's checks included, 5.4-6.0 s per 1,000,000 against json's
    8.5-9.2 s (200,000 lines in a loop, three runs on a slow day of this VM).

    What orjson refuses (bad JSON, NaN, a lone surrogate's escape, 1e400) goes to json,
    whose value or error message the row then gets, as before; so does a line with many
    brackets. A value orjson read as a float or a container might hold a 64-bit overflow
    made float: such a line is read again by json when it has 19 digits in a row (that
    search on every line cost 3 us, more than orjson saved; the type check costs 0.5).
    The brackets are counted only for a value that has some: a flat object is what json
    reads whatever brackets its strings hold."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return _JSON_LINE.decode(line)
    return value if _orjson_agrees(value, line) else _JSON_LINE.decode(line)


def _orjson_agrees(value: Any, line: str | bytes) -> bool:
    """Whether orjson's ``value`` of ``line`` (text, or UTF-8 bytes) is the one json reads:
    the checks ``_json_line`` describes. Brackets and digits are ASCII, so counting them
    in the bytes counts them in the text."""
    if type(value) is dict and _EXACT.issuperset(map(type, value.values())):
        return True
    if isinstance(line, bytes):
        if line.count(b"[") + line.count(b"{") > _MANY_BRACKETS:
            return False
        return _FLOATS_AS_JSON and _LONG_NUMBER_BYTES.search(line) is None
    if line.count("[") + line.count("{") > _MANY_BRACKETS:
        return False
    return _FLOATS_AS_JSON and _LONG_NUMBER.search(line) is None


class LineTooLong(Exception):
    """A line (or a record of several) longer than its limit; it was skipped, unread."""

    def __init__(self, limit: int, length: int, delimiters: int) -> None:
        super().__init__(f"the row is {length:,} characters long; at most {limit:,} are read")
        self.limit, self.length, self.delimiters = limit, length, delimiters


class BoundedLines:
    """The lines of a text file (for ``csv.reader`` or a loop), none of them read whole
    when longer than ``limit``: such a line is read on in chunks to its end and dropped,
    and ``LineTooLong`` raised in its place (``csv.reader`` passes it on and starts afresh
    at the next call). The limit is per record: call ``new_record()`` before each, so a
    quoted field spanning lines counts them together."""

    def __init__(self, f: TextIO, limit: int, delimiter: str = ",") -> None:
        self.f, self.limit, self.delimiter = f, limit, delimiter
        self.used = 0

    def new_record(self) -> None:
        self.used = 0

    def __iter__(self) -> BoundedLines:
        return self

    def __next__(self) -> str:
        line = self.f.readline(self.limit - self.used + 1)
        if not line:
            raise StopIteration
        self.used += len(line)
        if self.used > self.limit:
            length, delimiters = self.used, line.count(self.delimiter)
            while line and line[-1] not in "\r\n":
                line = self.f.readline(CHUNK)
                length += len(line)
                delimiters += line.count(self.delimiter)
            self.used = 0
            raise LineTooLong(self.limit, length, delimiters)
        return line


# A CSV or XLSX row is the list of its values in the header's order (a short CSV row has
# the first columns only; a longer one is a rejected row); a JSON Lines row is its object.
Row = list[Any] | dict[str, Any]


# What FileInfo.layout writes; a layout of another version is not read (the pre-pass runs).
LAYOUT_VERSION = 1


@dataclass(frozen=True)
class FileInfo:
    format: str
    columns: list[str]
    total_rows: int  # data rows, for progress (an estimate for CSV with quoted newlines)
    encoding: str = "utf-8"
    delimiter: str = ","
    # XLSX: the sheet's rows as JSON Lines, read once by inspect(); closed with this info.
    spool: IO[bytes] | None = field(default=None, compare=False, repr=False)

    def layout(self) -> dict[str, Any] | None:
        """What the pre-pass found, for a later sync of the same bytes to start from instead
        of reading the whole file again; None for XLSX, whose rows only the pre-pass
        spools."""
        if self.spool is not None or self.format == "xlsx":
            return None
        return {
            "version": LAYOUT_VERSION,
            "format": self.format,
            "columns": self.columns,
            "total_rows": self.total_rows,
            "encoding": self.encoding,
            "delimiter": self.delimiter,
        }

    @classmethod
    def of_layout(cls, layout: dict[str, Any]) -> FileInfo | None:
        """The info ``layout()`` gave, or None for a layout this version did not write."""
        if layout.get("version") != LAYOUT_VERSION:
            return None
        try:
            info = cls(
                format=str(layout["format"]),
                columns=[str(c) for c in layout["columns"]],
                total_rows=int(layout["total_rows"]),
                encoding=str(layout["encoding"]),
                delimiter=str(layout["delimiter"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
        return info if info.format in ("csv", "jsonl") else None


def detect_format(name: str, head: bytes) -> str:
    by_name = EXTENSIONS.get(Path(name).suffix.lower())
    if by_name:
        return by_name
    if head.startswith(b"PK\x03\x04"):
        return "xlsx"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return "jsonl"
    return "csv"


def inspect(path: Path, fmt: str, xlsx_limits: XlsxLimits | None = None) -> FileInfo:
    if fmt == "xlsx":
        return _inspect_xlsx(path, xlsx_limits or XlsxLimits())
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
    head = sample.splitlines(keepends=True)
    if len(head) > SNIFF_LINES:
        sample = "".join(head[:SNIFF_LINES])
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        delimiter = ","
    with path.open(encoding=encoding, newline="") as f:
        try:
            header = next(
                csv.reader(BoundedLines(f, MAX_HEADER_CHARS, delimiter), delimiter=delimiter), []
            )
        except LineTooLong as exc:
            count = exc.delimiters + 1
            raise BadFile(
                f"the header row is {exc.length:,} characters long (about {count:,} "
                f"column{'s' if count > 1 else ''}); a header may have at most "
                f"{MAX_COLUMNS} columns and {MAX_HEADER_CHARS:,} characters: "
                "is the first row a header?"
            ) from None
        except csv.Error as exc:
            raise BadFile(f"the header row cannot be read: {exc}") from None
    columns = [c.strip() for c in header]
    check_header(columns)
    return FileInfo("csv", columns, max(lines - 1, 0), encoding, delimiter)


def _csv_rows(path: Path, info: FileInfo) -> Iterator[tuple[int, Row | str]]:
    width = len(info.columns)
    with path.open(encoding=info.encoding, newline="") as f:
        lines = BoundedLines(f, MAX_ROW_CHARS, info.delimiter)
        reader = csv.reader(lines, delimiter=info.delimiter)
        try:
            next(reader)
        except (StopIteration, LineTooLong, csv.Error):
            return  # inspect() vetted the header
        row_number = 1
        while True:
            row_number += 1
            lines.new_record()
            try:
                values = next(reader)
            except StopIteration:
                return
            except LineTooLong as exc:
                yield row_number, f"{exc} (about {exc.delimiters + 1:,} fields)"
                continue
            except csv.Error as exc:
                yield row_number, f"unreadable CSV row: {exc}"
                continue
            if not values:
                continue  # blank line
            if len(values) > width:
                yield row_number, f"{len(values)} fields, but the header names {width}"
                continue
            yield row_number, values


def _inspect_jsonl(path: Path, encoding: str, lines: int) -> FileInfo:
    with path.open(encoding=encoding) as f:
        text = BoundedLines(f, MAX_ROW_CHARS)
        line = ""
        try:
            for line in text:
                if line.strip():
                    break
                text.new_record()
        except LineTooLong as exc:
            raise BadFile(
                f"the first line is {exc.length:,} characters long; "
                f"at most {MAX_ROW_CHARS:,} are allowed in a line"
            ) from None
    if not line.strip():
        raise BadFile("the file has no JSON objects")
    try:
        first = json.loads(line)
    except (ValueError, RecursionError):
        raise BadFile("the first line is not JSON: not a JSON Lines file") from None
    if not isinstance(first, dict):
        raise BadFile("the first line is not a JSON object: not a JSON Lines file")
    columns = [str(k) for k in first]
    if len(columns) > MAX_COLUMNS:
        raise BadFile(
            f"the first object has {len(columns)} keys; at most {MAX_COLUMNS} are allowed"
        )
    return FileInfo("jsonl", columns, lines, encoding)


_UTF8 = ("utf-8", "utf-8-sig")


def _jsonl_rows(path: Path, info: FileInfo) -> Iterator[tuple[int, Row | str]]:
    if info.encoding not in _UTF8:
        return _jsonl_text_rows(path, info.encoding)
    return _jsonl_utf8_rows(path, info.encoding)


def _jsonl_utf8_rows(path: Path, encoding: str) -> Iterator[tuple[int, Row | str]]:
    """A UTF-8 file's lines read as bytes and given to orjson as bytes, which it reads
    without encoding a text back to UTF-8: 2.6-2.9 us a row against 3.1-3.6 through the
    text path (``iter_rows`` over bench_sync.py's 200,000 ten-key lines, five rounds of
    each, alternating, in one process). Only lines this path reads exactly as the text
    path would go through it: a line that is blank by ASCII's whitespace is skipped as
    there; a line orjson refuses, or whose value json might read otherwise
    (``_orjson_agrees``), is decoded and read by ``_json_line`` (json's value or message,
    as before).
    From the first line longer than MAX_ROW_CHARS bytes, or holding a carriage return
    that the text path would read as a line break (not one of a final ``\\r\\n``), the rest
    of the file is read the text way, from that line's first byte and row number."""
    with path.open("rb") as f:
        offset = 0
        if encoding == "utf-8-sig" and f.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8:
            offset = len(codecs.BOM_UTF8)
        f.seek(offset)
        row_number = 0
        while line := f.readline(MAX_ROW_CHARS + 1):
            if len(line) > MAX_ROW_CHARS or (b"\r" in line and line.find(b"\r") != len(line) - 2):
                break
            offset += len(line)
            row_number += 1
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
                agrees = _orjson_agrees(value, line)
            except orjson.JSONDecodeError:
                agrees = False
            if not agrees:
                yield from _jsonl_text_line(row_number, _as_text(line))
                continue
            if type(value) is dict and len(value) <= MAX_COLUMNS:
                yield row_number, value
            else:
                yield from _jsonl_value(row_number, value)
        else:
            return
    yield from _jsonl_text_rows(path, "utf-8", offset, row_number)


def _as_text(line: bytes) -> str:
    """The line as the text reader has it (its ``\\r\\n`` read as ``\\n``)."""
    text = line.decode()
    return text[:-2] + "\n" if text.endswith("\r\n") else text


def _jsonl_text_rows(
    path: Path, encoding: str, offset: int = 0, row_number: int = 0
) -> Iterator[tuple[int, Row | str]]:
    with path.open("rb") as raw:
        raw.seek(offset)
        lines = BoundedLines(io.TextIOWrapper(raw, encoding=encoding), MAX_ROW_CHARS)
        while True:
            row_number += 1
            lines.new_record()
            try:
                line = next(lines)
            except StopIteration:
                return
            except LineTooLong as exc:
                yield row_number, str(exc)
                continue
            yield from _jsonl_text_line(row_number, line)


def _jsonl_text_line(row_number: int, line: str) -> Iterator[tuple[int, Row | str]]:
    if not line.strip():
        return
    try:
        value = _json_line(line)
    except ValueError as exc:
        yield row_number, f"invalid JSON: {exc.args[0] if exc.args else exc}"
        return
    except RecursionError:
        yield row_number, "invalid JSON: nested too deeply"
        return
    yield from _jsonl_value(row_number, value)


def _jsonl_value(row_number: int, value: Any) -> Iterator[tuple[int, Row | str]]:
    if not isinstance(value, dict):
        yield row_number, "not a JSON object"
    elif len(value) > MAX_COLUMNS:
        yield row_number, f"{len(value)} keys; at most {MAX_COLUMNS} are allowed"
    else:
        yield row_number, value


# -- xlsx -------------------------------------------------------------------------------


def _inspect_xlsx(path: Path, limits: XlsxLimits) -> FileInfo:
    """The whole sheet is read here, in one pass, so a workbook that is not what it claims
    (or costs more than its limits) fails before any row is written."""
    spooled = xlsx.spool(path, limits)
    info = FileInfo("xlsx", spooled.columns, spooled.rows, spool=spooled.file)
    weakref.finalize(info, spooled.file.close)
    return info


def _xlsx_rows(path: Path, info: FileInfo) -> Iterator[tuple[int, Row | str]]:
    if info.spool is None:  # an info made by hand: read the workbook now
        info = _inspect_xlsx(path, XlsxLimits())
    assert info.spool is not None
    # A descriptor of our own (closed here), on the spool's file: reading starts over.
    with open(
        os.dup(info.spool.fileno()), encoding="utf-8", errors="surrogatepass", newline="\n"
    ) as f:
        f.seek(0)
        lines = BoundedLines(f, MAX_ROW_CHARS + 1)  # the reader wrote none longer
        while True:
            lines.new_record()
            try:
                line = next(lines)
            except StopIteration:
                return
            except LineTooLong as exc:
                raise BadFile(f"the converted workbook has a line past its limit: {exc}") from None
            row_number, row = json.loads(line)
            yield row_number, row
