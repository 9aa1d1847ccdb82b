"""The operator's commands (restart the worker, stop and start Redis): the faults the
recovery and degraded-mode steps inject are whatever the deployment's own tools do."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable

from .common import Fail


def run_command(command: str, what: str, timeout: float, say: Callable[[str], None]) -> str:
    """Run an operator's command (shell=True) with a timeout; Fail unless it exits 0."""
    say(f"   running {what}: {command}")
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        # Output to a file, not a pipe: a command that leaves a process running in the
        # background (`… &`) must not keep us waiting for the pipe to close.
        proc = subprocess.Popen(
            command,
            shell=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            code = None
        out.seek(0)
        output = out.read().decode(errors="replace").strip()
    elapsed = time.monotonic() - started
    tail = " | ".join(output.splitlines()[-5:])
    if code is None:
        raise Fail(
            f"{what} did not finish within {timeout:g} s (killed); output: {tail or '(none)'}",
            "timed out",
        )
    if code != 0:
        raise Fail(f"{what} exited {code}; output: {tail or '(none)'}", f"exit {code}")
    return f"exit 0 in {elapsed:.1f} s"
