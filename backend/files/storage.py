"""Where uploaded and inbox files are kept, under names the client never chooses.

An upload is streamed to disk in chunks (never held whole in memory) while its SHA-256 is
computed; the stored name is derived from that digest, so no client-supplied path ever
reaches the file system.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

CHUNK = 1 << 20
PARTIAL_PREFIX = ".partial-"
_SAFE_EXTENSION = re.compile(r"^\.[a-z0-9]{1,8}$")


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is larger than {limit} bytes")
        self.limit = limit


class Readable(Protocol):
    async def read(self, size: int = -1) -> bytes: ...


@dataclass(frozen=True)
class StoredFile:
    path: Path
    size: int
    checksum: str
    original_name: str


def uploads_dir(data_dir: Path) -> Path:
    return data_dir.resolve() / "uploads"


def inbox_dir(data_dir: Path) -> Path:
    return data_dir.resolve() / "inbox"


def exports_dir(data_dir: Path) -> Path:
    """Where exports are written: ``<export id><extension>`` once finished, and
    ``.partial-<export id>-<run>`` while a run writes one."""
    return data_dir.resolve() / "exports"


def display_name(name: str | None) -> str:
    """The client's file name, for display only: no directories, no control characters."""
    base = os.path.basename((name or "").replace("\\", "/"))
    cleaned = "".join(ch for ch in base if ch.isprintable()).strip()
    return cleaned[:255] or "upload"


def _final_path(directory: Path, checksum: str, original_name: str) -> Path:
    extension = Path(original_name).suffix.lower()
    if not _SAFE_EXTENSION.match(extension):
        extension = ""
    return directory / f"{checksum[:16]}-{uuid.uuid4().hex[:8]}{extension}"


async def save_stream(
    source: Readable, *, data_dir: Path, original_name: str | None, max_bytes: int
) -> StoredFile:
    directory = uploads_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f"{PARTIAL_PREFIX}{uuid.uuid4().hex}"
    digest, size = hashlib.sha256(), 0
    try:
        with partial.open("wb") as out:
            while chunk := await source.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(max_bytes)
                digest.update(chunk)
                await asyncio.to_thread(out.write, chunk)
        name = display_name(original_name)
        final = _final_path(directory, digest.hexdigest(), name)
        partial.rename(final)
        return StoredFile(final, size, digest.hexdigest(), name)
    finally:
        partial.unlink(missing_ok=True)


def checksum_of(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def copy_in(path: Path, *, data_dir: Path) -> StoredFile:
    """Give an inbox file a stored name under uploads, leaving the inbox file in place.

    The inbox file is removed only once its registration committed, so a scan that fails
    or is killed half-way loses nothing: the next scan finds the file again, and a stored
    copy nobody registered is swept later. A hard link costs nothing; across file systems
    it is a copy, made under a ``.partial-`` name so a half-written one is never taken for
    a file."""
    checksum, size = checksum_of(path)
    directory = uploads_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    final = _final_path(directory, checksum, path.name)
    try:
        os.link(path, final)
    except OSError:
        partial = directory / f"{PARTIAL_PREFIX}{uuid.uuid4().hex}"
        try:
            shutil.copyfile(path, partial)
            partial.rename(final)
        finally:
            partial.unlink(missing_ok=True)
    return StoredFile(final, size, checksum, display_name(path.name))


def is_upload(path: Path, *, data_dir: Path) -> bool:
    """Whether ``path`` is a stored upload (only those may be removed on the client's behalf)."""
    return path.resolve().parent == uploads_dir(data_dir)


def _age_stamp(path: Path) -> float:
    """When the file last changed or got a new name: a hard link (``copy_in``) keeps the
    inbox file's mtime, possibly days old, but sets the ctime to now."""
    st = path.stat()
    return max(st.st_mtime, st.st_ctime)


@dataclass(frozen=True)
class Swept:
    partials: int
    unreferenced: int


def sweep(data_dir: Path, *, referenced: set[str], older_than: float) -> Swept:
    """Remove what no registration owns: ``.partial-`` files of killed writers and stored
    files no row points at, both only when older than ``older_than`` seconds (a younger
    unreferenced file may belong to a registration still in the queue)."""
    directory = uploads_dir(data_dir)
    if not directory.is_dir():
        return Swept(0, 0)
    cutoff = time.time() - older_than
    partials = unreferenced = 0
    for path in directory.iterdir():
        try:
            if not path.is_file() or _age_stamp(path) >= cutoff:
                continue
            if path.name.startswith(PARTIAL_PREFIX):
                path.unlink()
                partials += 1
            elif str(path) not in referenced:
                path.unlink()
                unreferenced += 1
        except FileNotFoundError:
            continue  # removed meanwhile (a sweep running twice): nothing to do
    return Swept(partials, unreferenced)


def stale_exports(data_dir: Path, *, older_than: float) -> list[Path]:
    """Files in the exports folder untouched for ``older_than`` seconds. A live run
    writes to its ``.partial-`` file at every batch, so an old one was left by a run that
    was killed or lost its lease; an old finished file belongs to no one once its export's
    row is gone (``export_id_of`` names the row to look for)."""
    directory = exports_dir(data_dir)
    if not directory.is_dir():
        return []
    cutoff = time.time() - older_than
    stale = []
    for path in directory.iterdir():
        with contextlib.suppress(FileNotFoundError):
            # The last write (a rename, unlike a hard link, says nothing about age here).
            if path.is_file() and path.stat().st_mtime < cutoff:
                stale.append(path)
    return stale


def export_id_of(path: Path) -> str | None:
    """The export a finished file belongs to (None for a ``.partial-`` file)."""
    return None if path.name.startswith(".") else path.name.split(".", 1)[0]
