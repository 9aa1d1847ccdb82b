"""The seven steps in order, and the report written out. Kept apart from the steps so that
the order, the interrupt handling and the exit status are in one short place."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from . import cancel, degraded, health, performance, recovery, status, submit
from .context import Context
from .report import Report, render

# Each step records its own items, skipped ones included, so the report always has all seven.
STEPS: tuple[Callable[[Context], None], ...] = (
    health.step,
    submit.step,
    status.step,
    cancel.step,
    recovery.step,
    performance.step,
    degraded.step,
)


def run(args: argparse.Namespace) -> Report:
    """Every step, stopping early only on Ctrl-C; the report then says it was interrupted
    (and the run failed), with what was found until then."""
    ctx = Context(args)
    try:
        for step in STEPS:
            step(ctx)
    except KeyboardInterrupt:
        ctx.report.interrupted = True
        ctx.say("interrupted")
    finally:
        ctx.api.close()
        ctx.report.duration_s = time.monotonic() - ctx.t0
    return ctx.report


def run_and_report(args: argparse.Namespace) -> int:
    """Run the check, write the report (stdout, and --json-out), return the exit status."""
    report = run(args)
    document = report.to_json()
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(document, indent=2) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(render(report))
    sys.stdout.flush()
    return 0 if report.ok else 1
