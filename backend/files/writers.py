"""Writing rows out as files: CSV, JSON Lines and XLSX, streamed, in the encoding asked.

Rows are written as they come (``write``), so a writer holds one batch at a time whatever
the file's size: CSV and JSON Lines go straight to the file; XLSX through openpyxl's
write-only mode, which streams the sheet's XML to a temporary file (and writes strings
inline, with no shared-strings table growing in memory) and zips it on ``close``.

**Formulas are never written.** A spreadsheet takes a cell whose text starts with ``=``,
``+``, ``-`` or ``@`` (or a tab or carriage return before one) for a formula, so an export
opened in one could compute, fetch or run something (CSV injection):

- CSV: such a value is written with a ``'`` in front (OWASP's advice), which a
  spreadsheet shows and never evaluates. A plain number (``-5``, ``+1.5``, ``-2e3``) is
  not a formula and is written as it is. A value so prefixed reads back with its ``'``.
- XLSX: every string is written as a string cell (``t="inlineStr"``) whatever it starts
  with; openpyxl would otherwise turn text starting with ``=`` into a formula cell, and
  text like ``#N/A`` into an error cell. A string cell is never evaluated, so the value
  needs no prefix and reads back exactly.
- JSON Lines is not opened by spreadsheets: values are written as they are.

XLSX also cannot hold every string: characters XML 1.0 forbids (control characters other
than tab, newline and carriage return) are dropped, and openpyxl cuts a cell at 32,767
characters, Excel's limit. Numbers and booleans stay numbers and booleans; nested JSON
values are written as JSON text. In CSV, booleans are ``true``/``false`` and null is an
empty field.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ERROR_CODES, ILLEGAL_CHARACTERS_RE
from openpyxl.worksheet._writer import ALL_TEMP_FILES, WorksheetWriter

EXTENSIONS = {"csv": ".csv", "jsonl": ".jsonl", "xlsx": ".xlsx"}
XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MEDIA_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson", "xlsx": XLSX_MEDIA_TYPE}

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")

Row = dict[str, Any]


def media_type(fmt: str, encoding: str) -> str:
    """The Content-Type of a file of this format; text says its charset."""
    if fmt == "xlsx":
        return XLSX_MEDIA_TYPE
    charset = "gb18030" if encoding == "gb18030" else "utf-8"
    return f"{MEDIA_TYPES[fmt]}; charset={charset}"


def csv_text(value: Any) -> str:
    """A value as a CSV field a spreadsheet will not evaluate."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else str(value)
    if text.startswith(FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


class TableWriter(Protocol):
    def write(self, rows: Iterable[Row]) -> None: ...

    def close(self) -> None:
        """Finish the file (for XLSX: zip it)."""

    def abort(self) -> None:
        """Give up: release the file and any temporary one (the caller removes the file)."""


class _CsvWriter:
    def __init__(self, out: IO[str], columns: Sequence[str]) -> None:
        self.out, self.columns = out, list(columns)
        self.writer = csv.writer(out)
        self.writer.writerow([csv_text(c) for c in self.columns])

    def write(self, rows: Iterable[Row]) -> None:
        columns = self.columns
        self.write_values([row.get(c) for c in columns] for row in rows)

    def write_values(self, rows: Iterable[Sequence[Any]]) -> None:
        self.writer.writerows([csv_text(v) for v in values] for values in rows)

    def close(self) -> None:
        self.out.close()

    def abort(self) -> None:
        self.out.close()


class _JsonlWriter:
    def __init__(self, out: IO[str], columns: Sequence[str]) -> None:
        self.out, self.columns = out, list(columns)

    def write(self, rows: Iterable[Row]) -> None:
        columns = self.columns
        self.out.writelines(
            json.dumps({c: row[c] for c in columns if c in row}, ensure_ascii=False) + "\n"
            for row in rows
        )

    def close(self) -> None:
        self.out.close()

    def abort(self) -> None:
        self.out.close()


class _XlsxWriter:
    def __init__(
        self,
        target: Path | IO[bytes],
        columns: Sequence[str],
        title: str,
        sheet_stream: Path | None = None,
    ) -> None:
        self.target, self.columns = target, list(columns)
        self.workbook = Workbook(write_only=True)
        self.sheet = self.workbook.create_sheet(title=_sheet_title(title))
        if sheet_stream is not None:
            # openpyxl streams the sheet's XML into a temporary file of its own (in the
            # system's temp folder) until save zips it; put that file beside the target
            # instead, so a killed run's leftovers are where the next run and the purge
            # look (what WriteOnlyWorksheet._get_writer does, with a path of ours).
            self.sheet._writer = WorksheetWriter(self.sheet, out=str(sheet_stream))
            ALL_TEMP_FILES.append(str(sheet_stream))  # where its cleanup() looks
            self.sheet._writer.write_top()
        self.sheet.append([self._cell(c) for c in self.columns])

    def _cell(self, value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False)
        text = ILLEGAL_CHARACTERS_RE.sub("", str(value))
        if text.startswith("=") or text in ERROR_CODES:
            cell = WriteOnlyCell(self.sheet, value=text)
            cell.data_type = "s"  # text, never a formula or an error value
            return cell
        return text

    def write(self, rows: Iterable[Row]) -> None:
        columns = self.columns
        self.write_values([row.get(c) for c in columns] for row in rows)

    def write_values(self, rows: Iterable[Sequence[Any]]) -> None:
        cell, append = self._cell, self.sheet.append
        for values in rows:
            append([cell(v) for v in values])

    def close(self) -> None:
        self.workbook.save(self.target)

    def abort(self) -> None:
        # The sheet streams into a temporary file of openpyxl's (WorksheetWriter.out):
        # end its writer, then remove it.
        sheet_writer = self.sheet._writer
        if sheet_writer is not None:
            with contextlib.suppress(Exception):
                sheet_writer.xf.close()
            with contextlib.suppress(OSError):
                sheet_writer.cleanup()


def _sheet_title(name: str) -> str:
    cleaned = re.sub(r"[\[\]:*?/\\]", "_", name)[:31]
    return cleaned or "export"


def open_writer(
    fmt: str, path: Path, *, encoding: str, columns: Sequence[str], title: str
) -> TableWriter:
    """A writer of ``columns`` (the header, then one line or row per record) to ``path``
    (for XLSX, the sheet is streamed to ``<path>.sheet.xml`` meanwhile, removed on close).
    ``encoding`` applies to CSV and JSON Lines (utf-8-sig writes a byte-order mark, which
    Excel needs to read UTF-8 CSV); an XLSX file is always UTF-8 inside."""
    if fmt == "xlsx":
        return _XlsxWriter(path, columns, title, path.with_name(path.name + ".sheet.xml"))
    out = path.open("w", encoding=encoding, errors="replace", newline="")
    if fmt == "jsonl":
        return _JsonlWriter(out, columns)
    return _CsvWriter(out, columns)


def render_table(
    fmt: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str
) -> bytes:
    """A small table (a report's result) as the bytes of a CSV (UTF-8 with a byte-order
    mark, for Excel) or XLSX file, formulas kept out as above."""
    if fmt == "xlsx":
        buffer = io.BytesIO()
        workbook = _XlsxWriter(buffer, columns, title)
        workbook.write_values(rows)
        workbook.close()
        return buffer.getvalue()
    text = io.StringIO(newline="")
    _CsvWriter(text, columns).write_values(rows)
    return text.getvalue().encode("utf-8-sig")
