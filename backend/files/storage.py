"""Where uploaded and inbox files are kept, under names the client never chooses.

An upload is streamed to disk in chunks (never held whole in memory) while its SHA-256 is
computed; the stored name is derived from that digest, so no client-supplied path ever
reaches the file system.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

CHUNK = 1 << 20
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
    partial = directory / f".partial-{uuid.uuid4().hex}"
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


def adopt(path: Path, *, data_dir: Path) -> StoredFile:
    """Move a file (from the inbox) into the uploads directory, checksummed."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    directory = uploads_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    final = _final_path(directory, digest.hexdigest(), path.name)
    shutil.move(str(path), final)
    return StoredFile(final, size, digest.hexdigest(), display_name(path.name))
