"""Serving the API: the one way the launcher, the tests, the image and compose start uvicorn.

``python -m backend.serve --host 0.0.0.0 --port 8000 [--workers N] [--access-log]
[--root-path /prefix] [--app module:app]``; ``--workers`` defaults to ``WEB_CONCURRENCY``
(or 1), as uvicorn's own command does. Other uvicorn settings are not passed through.

An idle keep-alive connection is kept longer than any client we know keeps one. uvicorn's
default is 5 s and so is httpx's pool expiry: a client that waits about 5 s between two
requests can send the second on a connection at the moment the server closes it, and gets
"Server disconnected without sending a response" instead of an answer (a CI run failed
on it). With the server waiting longer than httpx (5 s), aiohttp (15 s) and the usual load
balancers (60 s), the client is always the side that closes, and it closes before it
sends, never during. Shutting down still closes idle connections at once.
"""

from __future__ import annotations

import argparse
import os

import uvicorn

KEEP_ALIVE_SECONDS = 75

# uvloop serves 100 connections at the same rate as asyncio but unevenly: its p99 was 0.9
# to 1.4 s where asyncio's is 0.1 to 0.2 s (benchmarks/RESULTS.md).
LOOP = "asyncio"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m backend.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--app",
        default="backend.main:app",
        help="the ASGI app to serve (the benchmarks serve the plain pattern's this way)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WEB_CONCURRENCY", "1")),
        help="uvicorn worker processes (default: WEB_CONCURRENCY, or 1)",
    )
    parser.add_argument("--root-path", default="", help="the path prefix a proxy serves us under")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    uvicorn.run(
        args.app,
        host=args.host,
        port=args.port,
        workers=args.workers,
        root_path=args.root_path,
        access_log=args.access_log,
        loop=LOOP,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )


if __name__ == "__main__":
    main()
