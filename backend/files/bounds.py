"""What a file may be and cost, shared by the readers (backend/files/readers.py) and the
workbook child process (backend/files/xlsx.py): the size limits, the one error a bad file
raises, and the header rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backend.config import Settings

MAX_COLUMNS = 2000
MAX_FIELD_BYTES = 1 << 20
MAX_HEADER_CHARS = 1 << 20  # 2000 columns of long names fit; a million do not
MAX_ROW_CHARS = 8 << 20  # a few fields of the largest size


class BadFile(Exception):
    """The file cannot be synced at all; the message says why, for a person to read."""


@dataclass(frozen=True)
class XlsxLimits:
    """What reading one workbook may cost. The defaults are Settings' (XLSX_*)."""

    max_unpacked_bytes: int = 200 << 20
    max_compression_ratio: float = 100.0
    parse_memory_bytes: int = 512 << 20
    parse_seconds: float = 240.0
    max_spool_bytes: int = 1 << 30

    @classmethod
    def of(cls, settings: Settings) -> XlsxLimits:
        return cls(
            max_unpacked_bytes=settings.xlsx_max_unpacked_bytes,
            max_compression_ratio=settings.xlsx_max_compression_ratio,
            parse_memory_bytes=settings.xlsx_parse_memory_bytes,
            parse_seconds=settings.xlsx_parse_seconds,
            max_spool_bytes=settings.xlsx_max_spool_bytes,
        )


def check_header(columns: list[str]) -> None:
    if not columns or not any(columns):
        raise BadFile("there is no header row naming the columns")
    if len(columns) > MAX_COLUMNS:
        raise BadFile(f"the header has {len(columns)} columns; at most {MAX_COLUMNS} are allowed")
    if "" in columns:
        raise BadFile(f"header column {columns.index('') + 1} has no name")
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise BadFile(f"the header names a column twice: {', '.join(duplicates)}")
