"""Run the ``wrk`` load generator (C, epoll) with benchmarks/wrk_load.lua and parse its report.

The Lua script's ``done`` hook prints one JSON line; wrk itself needs no Python CPU, so on
a 2-core machine the load generator takes less from the API it measures than an asyncio
client would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).resolve().parent / "wrk_load.lua"
INSTALL_HINT = "wrk is needed: apt-get update && apt-get install -y wrk (Debian/Ubuntu package)"


@dataclass
class WrkResult:
    requests: int
    seconds: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def require_wrk() -> str:
    """The wrk binary; exit 2 with how to install it when it is missing."""
    found = shutil.which("wrk")
    if found is None:
        print(INSTALL_HINT, file=sys.stderr)
        raise SystemExit(2)
    return found


def run_wrk(url: str, connections: int, seconds: float, lua_args: list[str]) -> WrkResult:
    """``connections`` keep-alive connections on one wrk thread for ``seconds``."""
    assert url.startswith("http://127.0.0.1:"), url
    args = [
        require_wrk(), "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s",
        "--timeout", "30s", "-s", str(LUA), url, "--", *lua_args,
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=True)
    report = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not report:
        raise RuntimeError(f"wrk printed no report:\n{done.stdout}\n{done.stderr}")
    return WrkResult(**json.loads(report[-1]))
