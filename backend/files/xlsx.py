"""XLSX, read so that a hostile workbook costs only what its limits allow.

A workbook is a zip of XML, and openpyxl believes what the XML says: 84 KB can unpack to
34 MB of shared strings (hundreds of MB once they are Python strings), and a sheet can
declare, or reach with one stray cell, a million rows of 16,384 columns. Parsing runs in a
thread of the worker (or of the API, with Redis down); a thread cannot be stopped, so a
soft time limit would cancel the await and leave the work running, and memory spent there
is the whole process's.

So the sheet is read by a child process (``python -m backend.files.xlsx``) that first
holds itself to ``XlsxLimits`` (address space, CPU and wall-clock time, the size of what it
writes, no core file), then measures the archive before opening it, and turns the first
sheet into JSON Lines in an anonymous temporary file: one line ``[row_number, [values]]``
for each data row, or ``[row_number, "reason"]`` for a row that is rejected. The caller
streams that file like any other. Whatever a workbook does, the worst that can happen is
that child dying, which is a ``BadFile``: nobody else grows or stalls past the limit. The
temporary file never has a name on disk (``O_TMPFILE``), so nothing is left behind
whichever process is killed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, NoReturn
from xml.parsers import expat

from backend.files.bounds import (
    MAX_HEADER_CHARS,
    MAX_ROW_CHARS,
    BadFile,
    XlsxLimits,
    check_header,
)

log = logging.getLogger(__name__)

CHILD_MODULE = "backend.files.xlsx"
EXCEL_MAX_ROWS = 1_048_576  # the last row Excel has; a sheet claiming more was not written by it
RATIO_FLOOR = 1 << 20  # a member unpacking to less is too small to matter, whatever its ratio
GRACE_SECONDS = 2.0  # the child's own alarm fires first; the parent's timeout is the backstop
LOG_TAIL = 2000  # characters of the child's stderr kept for the log when it fails oddly
TOO_LARGE = "the workbook is too large to parse"
EXIT_REFUSED = 2  # the workbook was refused; stdout says why
# How the child ends at its time limits: its alarm, RLIMIT_CPU's soft and hard limits.
TIME_SIGNALS = frozenset({signal.SIGALRM, signal.SIGXCPU, signal.SIGKILL})
_EXPAT_NO_MEMORY = expat.errors.codes[expat.errors.XML_ERROR_NO_MEMORY]


@dataclass(frozen=True)
class Spooled:
    """The first sheet as JSON Lines (``file``), with its header and its data row count."""

    file: IO[bytes]
    columns: list[str]
    rows: int


# -- in the caller's process --------------------------------------------------------------


def spool(path: Path, limits: XlsxLimits) -> Spooled:
    """Convert the first sheet of ``path`` in a child process held to ``limits``.

    Raises ``BadFile`` for a workbook that cannot be read, or not within the limits. The
    returned file is the caller's to close; it has no name, so closing it (or the process
    ending) is all the cleaning up there is.
    """
    with contextlib.ExitStack() as on_failure:
        rows = on_failure.enter_context(
            tempfile.TemporaryFile(dir=path.parent, prefix=".xlsx-rows-")
        )
        columns, count = _run_child(path, rows, limits)
        rows.seek(0)
        on_failure.pop_all()
        return Spooled(rows, columns, count)


def _run_child(path: Path, rows: IO[bytes], limits: XlsxLimits) -> tuple[list[str], int]:
    with tempfile.TemporaryFile(dir=path.parent, prefix=".xlsx-log-") as stderr:
        try:
            child = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    CHILD_MODULE,
                    str(rows.fileno()),
                    str(path),
                    json.dumps(asdict(limits)),
                ],
                pass_fds=(rows.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=_child_env(),
                timeout=limits.parse_seconds + GRACE_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:  # run() has killed it
            raise BadFile(_too_slow(limits)) from None
        answer = _answer(child.stdout)
        if child.returncode == 0 and "columns" in answer:
            return list(answer["columns"]), int(answer["rows"])
        if "error" in answer:
            raise BadFile(str(answer["error"]))
        if -child.returncode in TIME_SIGNALS:
            raise BadFile(_too_slow(limits))
        stderr.seek(0, os.SEEK_END)
        stderr.seek(max(stderr.tell() - LOG_TAIL, 0))
        tail = stderr.read().decode(errors="replace")
        log.warning("the XLSX reader for %s exited %s: %s", path, child.returncode, tail)
        raise BadFile(_died(child.returncode, limits))


def _child_env() -> dict[str, str]:
    """The caller's environment, with this package importable wherever it was started."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}


def _answer(stdout: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(stdout)
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _too_slow(limits: XlsxLimits) -> str:
    return f"{TOO_LARGE}: reading it took more than {limits.parse_seconds:g} s"


def _died(returncode: int, limits: XlsxLimits) -> str:
    if returncode < 0:
        # A C allocation that failed under RLIMIT_AS ends this way, not as MemoryError.
        name = signal.Signals(-returncode).name
        return f"{TOO_LARGE}: the reader stopped with {name} (at most {_mb(limits)} MB)"
    return f"not a readable XLSX file: the reader failed (exit status {returncode})"


def _mb(limits: XlsxLimits) -> str:
    return f"{limits.parse_memory_bytes / (1 << 20):,.0f}"


def check_archive(path: Path, limits: XlsxLimits) -> None:
    """Refuse a zip that unpacks to more than the limits allow, from its directory alone.

    The sizes are the central directory's claims, but ``zipfile`` never inflates a member
    past its claimed size, so what passes here is what openpyxl can be given.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError):
        raise BadFile("not a readable XLSX file (it is not a zip archive; truncated?)") from None
    total = 0
    for member in members:
        total += member.file_size
        if total > limits.max_unpacked_bytes:
            raise BadFile(
                f"{TOO_LARGE}: it unpacks to more than {limits.max_unpacked_bytes:,} bytes"
            )
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > RATIO_FLOOR and ratio > limits.max_compression_ratio:
            raise BadFile(
                f"{TOO_LARGE}: {member.filename} unpacks to {member.file_size:,} bytes from "
                f"{member.compress_size:,}, {ratio:,.0f} times its size (at most "
                f"{limits.max_compression_ratio:g}): a zip bomb, not a spreadsheet"
            )


# -- in the child -------------------------------------------------------------------------


def _limit_self(limits: XlsxLimits) -> None:
    """Hold this process to the limits before it reads a byte of the workbook."""
    seconds = math.ceil(limits.parse_seconds)
    for which, value, hard in (
        (resource.RLIMIT_AS, limits.parse_memory_bytes, limits.parse_memory_bytes),
        (resource.RLIMIT_CPU, seconds, seconds + 1),  # soft: SIGXCPU; hard: SIGKILL
        (resource.RLIMIT_FSIZE, limits.max_spool_bytes, limits.max_spool_bytes),
        (resource.RLIMIT_CORE, 0, 0),  # a killed reader leaves no core file behind
    ):
        _, current = resource.getrlimit(which)
        if current != resource.RLIM_INFINITY:
            value, hard = min(value, current), min(hard, current)
        resource.setrlimit(which, (value, hard))
    # Wall-clock too (a parse can sleep on I/O, and an orphaned child has no parent to
    # time it out: the caller's worker may have been killed mid-task).
    signal.alarm(seconds)
    # Past RLIMIT_FSIZE a write fails with EFBIG, which can be reported, rather than
    # the default SIGXFSZ killing the process without a word.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def convert(path: Path, out: IO[str], limits: XlsxLimits) -> tuple[list[str], int]:
    """Write the first sheet's data rows to ``out``; return its header and the row count.

    Declared dimensions are not believed (``reset_dimensions``): openpyxl would otherwise
    pad every row to the declared width and add the declared rows, and a wrong dimension
    (some writers put ``A1`` for any sheet) would cut the real ones short. A declared size
    no workbook within the limits could hold is refused outright, since only a forged file
    says it. Rows a sheet skips cost one cheap empty step each, and row numbers cannot pass
    Excel's last.
    """
    check_archive(path, limits)
    from openpyxl import load_workbook

    # A file object, not the path: openpyxl refuses a path whose extension it does not
    # know, and the format was found by content (a stored name may have none).
    with path.open("rb") as source:
        try:
            workbook = load_workbook(source, read_only=True, data_only=True)
        except (MemoryError, BadFile):
            raise
        except Exception as exc:  # openpyxl raises whatever its parsers raise
            raise _unreadable(exc) from None
        return _convert_sheet(workbook, out, limits)


def _convert_sheet(workbook: Any, out: IO[str], limits: XlsxLimits) -> tuple[list[str], int]:
    try:
        if not workbook.worksheets:
            raise BadFile("the workbook has no sheets")
        sheet = workbook.worksheets[0]
        _check_declared_size(sheet, limits)
        sheet.reset_dimensions()
        rows: Iterator[Sequence[Any]] = sheet.iter_rows(values_only=True)
        try:
            columns = _header(next(rows, ()))
            count = 0
            for row_number, values in enumerate(rows, 2):
                line = _row_line(row_number, values, len(columns))
                if line is not None:
                    out.write(line)
                    count += 1
        except (MemoryError, BadFile):
            raise
        except OSError as exc:
            if exc.errno == errno.EFBIG:
                raise  # the spool is full: main() says so
            raise _unreadable(exc) from None
        except Exception as exc:
            raise _unreadable(exc) from None
        return columns, count
    finally:
        workbook.close()


def _check_declared_size(sheet: Any, limits: XlsxLimits) -> None:
    """Refuse a sheet declaring more cells than its unpacked size limit has bytes.

    Every cell a sheet holds costs its XML more than a byte, so no workbook that passed
    the archive check can hold that many: the declaration (``A1:XFD1048576`` in a 1.5 KB
    file) is forged, and a forged file is refused with the reason rather than read as
    whatever it happens to hold.
    """
    if None in (sheet.min_row, sheet.min_column, sheet.max_row, sheet.max_column):
        return  # no <dimension>: nothing declared
    cells = (sheet.max_row - sheet.min_row + 1) * (sheet.max_column - sheet.min_column + 1)
    if cells > limits.max_unpacked_bytes:
        raise BadFile(
            f"the sheet declares {sheet.calculate_dimension()} ({cells:,} cells); no workbook "
            f"within the {limits.max_unpacked_bytes:,}-byte unpacked limit can hold that "
            "many, so the declaration is forged"
        )


def _unreadable(exc: Exception) -> BadFile | MemoryError:
    # expat reports a failed allocation as a parse error of its own, not as MemoryError.
    if isinstance(exc, SyntaxError) and getattr(exc, "code", None) == _EXPAT_NO_MEMORY:
        return MemoryError()
    return BadFile(f"not a readable XLSX file: {exc}")


def _header(values: Sequence[Any]) -> list[str]:
    columns = [_cell_text(v) for v in values]
    while columns and columns[-1] == "":
        columns.pop()  # trailing empty header cells are formatting, not columns
    length = sum(map(len, columns))
    if length > MAX_HEADER_CHARS:
        raise BadFile(
            f"the header row is {length:,} characters long; at most "
            f"{MAX_HEADER_CHARS:,} are allowed: is the first row a header?"
        )
    check_header(columns)
    return columns


def _row_line(row_number: int, values: Sequence[Any], width: int) -> str | None:
    """The JSON line for one row, or None for an empty one."""
    if row_number > EXCEL_MAX_ROWS:
        raise BadFile(
            f"the sheet has rows past row {EXCEL_MAX_ROWS:,}, the last one Excel has: "
            "not a workbook a spreadsheet program wrote"
        )
    if values.count(None) == len(values):  # also the [] openpyxl gives for a skipped row
        return None
    extra = len(values) - width
    if extra > 0 and values[width:].count(None) < extra:
        return _line(row_number, f"values beyond the {width} named columns")
    cells = [_cell_value(v) for v in values[:width]]
    cells += [None] * (width - len(cells))
    length = sum(len(v) for v in cells if isinstance(v, str))
    if length <= MAX_ROW_CHARS:
        line = _line(row_number, cells)
        if len(line) <= MAX_ROW_CHARS:
            return line
        length = len(line)
    reason = f"the row is {length:,} characters long; at most {MAX_ROW_CHARS:,} are read"
    return _line(row_number, reason)


def _line(row_number: int, row: list[Any] | str) -> str:
    return json.dumps([row_number, row], ensure_ascii=False, default=str) + "\n"


def _cell_text(value: Any) -> str:
    return "" if value is None else str(_cell_value(value)).strip()


def _cell_value(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def main(argv: Sequence[str]) -> NoReturn:
    """``python -m backend.files.xlsx ROWS_FD PATH LIMITS_JSON``: the answer is one JSON
    object on stdout, ``{"columns", "rows"}`` or ``{"error"}``."""
    fd, path, limits_json = argv
    limits = XlsxLimits(**json.loads(limits_json))
    _limit_self(limits)
    warnings.simplefilter("ignore")  # openpyxl warns per odd cell: unbounded stderr
    answer: dict[str, Any] | None = None
    try:
        with open(int(fd), "w", encoding="utf-8", errors="surrogatepass", newline="\n") as out:
            columns, rows = convert(Path(path), out, limits)
        answer = {"columns": columns, "rows": rows}
    except BadFile as exc:
        answer = {"error": str(exc)}
    except MemoryError:
        pass  # answered below, once the traceback (and the memory its frames hold) is gone
    except OSError as exc:
        if exc.errno != errno.EFBIG:
            raise
        spool_mb = limits.max_spool_bytes / (1 << 20)
        answer = {"error": f"{TOO_LARGE}: its rows come to more than {spool_mb:,.0f} MB"}
    if answer is None:
        answer = {"error": f"{TOO_LARGE}: reading it needs more than {_mb(limits)} MB"}
    sys.stdout.write(json.dumps(answer, ensure_ascii=False))
    sys.stdout.flush()
    raise SystemExit(0 if "columns" in answer else EXIT_REFUSED)


if __name__ == "__main__":
    main(sys.argv[1:])
