"""How a row read from a file becomes a record: its key, its digest and its JSON text.

This is the per-row half of a sync's cost, so it is built for speed (issue 14):

- A CSV or XLSX row stays the list the reader made; the dict and its JSON text are built
  only for a row that is written (new or changed). An unchanged row of a re-sync costs its
  key and its digest, nothing more.
- The digest is xxh3-128 over the row's column names and values as JSON
  (``["a","b"]["1","x"]``): a list row and a dict row (JSON Lines) with the same columns
  and values have the same digest, as they have the same stored JSON.
- orjson writes the JSON (300,000 ten-column rows: 0.09 s against ``json.dumps``'s 1.1 s);
  what it refuses (integers past 64 bits, lone surrogates from a workbook, nesting past
  254 levels) goes through ``json``, ASCII-escaped so the text stays valid UTF-8.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import orjson
from xxhash import xxh3_128_hexdigest

Values = list[Any] | dict[str, Any]
Read = tuple[int, Values | str]  # (row number, the row or why it cannot be read)


class Unstorable(ValueError):
    """A row no database can store as JSON: rejected with its row number, not a failed
    sync."""


class TooDeep(Unstorable):
    """Nested past what ``json`` can write (orjson stops at 255 levels, json at Python's
    recursion limit): a JSON line deeper than json can read was always rejected by the
    reader; one a little shallower could still fail here."""

    def __str__(self) -> str:
        return "the row is nested too deeply to store"


class NotUnicode(Unstorable):
    """A value holds a lone surrogate (an escape in a JSON line, a cell of a workbook): no
    database stores it as JSON text (PostgreSQL's jsonb refuses even the escape), so the
    row is rejected, the same way on both."""

    def __str__(self) -> str:
        return "a value is not valid Unicode (it holds a lone surrogate)"


def dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        try:
            text = json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)
        except RecursionError:
            raise TooDeep() from None
        try:
            return text.encode()
        except UnicodeEncodeError:
            raise NotUnicode() from None


class PreparedRow(NamedTuple):
    """A row ready to write. ``values`` is a list matching ``columns`` (CSV, XLSX; a short
    CSV row has the first columns only) or, with ``columns`` None, a dict (JSON Lines)."""

    key: str
    row_hash: str
    values: Values
    columns: Sequence[str] | None = None

    def data_json(self) -> str:
        """The record's stored JSON: the row as an object, in its column order."""
        if self.columns is None:
            return dumps(self.values).decode()
        return dumps(dict(zip(self.columns, self.values, strict=False))).decode()


def record_key(values: list[str]) -> str:
    """A record's key: its key columns' values (stripped, not empty) as a JSON list. The
    spelling is ``json.dumps``'s (``["a", "b"]``), which the records stored so far were
    keyed by; orjson writes a string as ``json.dumps(..., ensure_ascii=False)`` does."""
    try:
        if len(values) == 1:
            return orjson.dumps(values).decode()
        return "[" + ", ".join([orjson.dumps(v).decode() for v in values]) + "]"
    except TypeError:  # strings only: orjson refuses nothing but a lone surrogate
        raise NotUnicode() from None


class Batch(NamedTuple):
    read: int
    rows: list[PreparedRow]
    rejected: list[tuple[int, str]]


class RowShape:
    """Keys and digests for the rows of one file, whose header is ``columns``."""

    def __init__(self, columns: Sequence[str], keys: Sequence[str]) -> None:
        self.columns = list(columns)
        self.keys = list(keys)
        self.key_at = [self.columns.index(k) if k in self.columns else len(columns) for k in keys]
        # The digest's column half for a list row of each length, made once per file.
        self.heads = [dumps(self.columns[:n]) for n in range(len(self.columns) + 1)]

    def next_batch(self, rows: Iterator[Read], n: int, max_bytes: int = 1 << 62) -> Batch:
        """Read, key and digest up to ``n`` rows, fewer once their JSON holds ``max_bytes``
        (in a thread: it is all CPU and file I/O)."""
        good: list[PreparedRow] = []
        rejected: list[tuple[int, str]] = []
        read = size = 0
        columns, heads, key_at, key_of = self.columns, self.heads, self.key_at, record_key
        # One key column (the usual case) without a loop; rows made by tuple.__new__, as
        # PreparedRow(...) runs a Python-level __new__. With the two, a 1,000,000-row CSV
        # reads, keys and digests in 4.0-4.1 s against the loop before's 4.7-4.8 s (best of 9,
        # two runs, the worker's collector thresholds). JSON Lines the same way, with orjson
        # called directly (the fallback only for what it refuses) and _json_line's brackets
        # counted only for a nested line: 4.08-4.30 s against 5.03-5.04
        # (bench_prepare_rows --format jsonl, best of 5, two alternating runs).
        single = key_at[0] if len(key_at) == 1 else -1
        names, key_name = self.keys, self.keys[0] if self.keys else ""
        make = tuple.__new__
        for row_number, row in rows:
            read += 1
            if isinstance(row, list):
                width = len(row)
                if single >= 0:
                    keys = ["" if single >= width or (v := row[single]) is None else str(v).strip()]
                else:
                    keys = [
                        "" if i >= width or (v := row[i]) is None else str(v).strip()
                        for i in key_at
                    ]
                if width > len(columns):  # neither reader yields one; refused, not a crash
                    wide = f"{width} values, but the header names {len(columns)}"
                    rejected.append((row_number, wide))
                elif all(keys):
                    try:
                        encoded = dumps(row)
                        digest = xxh3_128_hexdigest(heads[width] + encoded)
                        good.append(make(PreparedRow, (key_of(keys), digest, row, columns)))
                        size += len(encoded)
                    except Unstorable as exc:
                        rejected.append((row_number, str(exc)))
                else:
                    rejected.append((row_number, self._missing(keys)))
            elif isinstance(row, str):
                rejected.append((row_number, row))
            else:
                if single >= 0:
                    keys = ["" if (v := row.get(key_name)) is None else str(v).strip()]
                else:
                    keys = ["" if (v := row.get(k)) is None else str(v).strip() for k in names]
                if all(keys):
                    try:
                        try:
                            encoded = orjson.dumps(list(row)) + orjson.dumps(list(row.values()))
                        except TypeError:
                            encoded = dumps(list(row)) + dumps(list(row.values()))
                        digest = xxh3_128_hexdigest(encoded)
                        good.append(make(PreparedRow, (key_of(keys), digest, row, None)))
                        size += len(encoded)
                    except Unstorable as exc:
                        rejected.append((row_number, str(exc)))
                else:
                    rejected.append((row_number, self._missing(keys)))
            if read >= n or size >= max_bytes:
                break
        return Batch(read, good, rejected)

    def _missing(self, keys: list[str]) -> str:
        empty = ", ".join(k for k, v in zip(self.keys, keys, strict=True) if not v)
        return f"missing key column value: {empty}"
