"""A lean HTTP/1.1 keep-alive load generator on asyncio streams.

httpx spends more CPU per request than the API under test once a hundred connections
share its pool, so on a 2-core machine it measures itself. This client does only what a
JSON POST needs: write the request, read the status line, headers and Content-Length body.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse


@dataclass
class LoadResult:
    requests: int
    elapsed: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    bodies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes
) -> tuple[int, bytes]:
    writer.write(head + body)
    await writer.drain()
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def post_load(
    base_url: str, path: str, payload: dict[str, Any], token: str, clients: int, total: int
) -> LoadResult:
    """``clients`` connections, each sending POSTs back to back until ``total`` are done."""
    url = urlparse(base_url)
    body = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    result = LoadResult(total, 0.0)
    remaining = total

    async def client() -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        try:
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                status, raw = await _request(reader, writer, head, body)
                result.latencies_ms.append((time.perf_counter() - started) * 1000)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                result.bodies.append(json.loads(raw))
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    result.elapsed = time.perf_counter() - started
    return result
