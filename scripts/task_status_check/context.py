"""What the steps share while the check runs. A step never calls another: whatever a later
step needs from an earlier one (the file to sync, the task submitted, why nothing can run)
is left here, so each step can be read alone."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from .commands import run_command
from .common import Fail, Skip, generated_csv
from .report import FAILED, PASSED, SKIPPED, Group, Item, Report
from .session import Session


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.run_id = uuid.uuid4().hex[:8]
        self.api = Session(args, self.say)
        self.report = Report(
            base_url=args.base_url,
            run_id=self.run_id,
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self.not_ready: str | None = None  # why steps 2 to 7 cannot run
        self.file_id: int | None = None
        self.file_rows: int | None = None  # known when the script made the file
        self.sync_task_id: str | None = None

    def say(self, message: str) -> None:
        """Progress on stderr, so stdout holds nothing but the report (--json pipes it)."""
        if not self.args.quiet:
            sys.stderr.write(f"[{time.monotonic() - self.t0:7.1f}s] {message}\n")
            sys.stderr.flush()

    def group(self, step: int, name: str) -> Group:
        group = Group(step, name)
        self.report.groups.append(group)
        self.say(f"== {group.title}")
        return group

    def check(self, group: Group, name: str, target: str, fn: Callable[[], str]) -> bool:
        """Run one item: ``fn`` returns its result (passed) or raises Fail or Skip."""
        self.say(f"   {name} ...")
        try:
            item = Item(name, PASSED, fn(), target)
        except Skip as exc:
            item = Item(name, SKIPPED, "", target, str(exc))
        except Fail as exc:
            item = Item(name, FAILED, exc.result, target, exc.reason)
        except httpx.HTTPError as exc:
            item = Item(name, FAILED, "no answer", target, self.api.http_reason(exc))
        except Exception as exc:  # a check must never take the whole run down
            item = Item(name, FAILED, "error", target, f"unexpected {type(exc).__name__}: {exc}")
        group.items.append(item)
        line = f"   {name}: {item.status.upper()}"
        line += f" - {item.result}" if item.result else ""
        line += f" ({item.reason})" if item.reason else ""
        self.say(line)
        return item.status == PASSED

    def skip(self, group: Group, name: str, target: str, reason: str) -> None:
        group.items.append(Item(name, SKIPPED, "", target, reason))
        self.say(f"   {name}: SKIPPED ({reason})")

    def generate_and_register(self, rows: int, suffix: str) -> int:
        """A fresh dataset per run (and per use), so reruns never sync into old records and
        the row counts checked are this run's alone."""
        dataset = f"status-check-{self.run_id}{suffix}"
        self.say(f"   generating a {rows:,}-row CSV")
        content = generated_csv(rows, f"{self.run_id}{suffix}")
        return self.api.register(content, len(content), f"{dataset}.csv", dataset, "id")

    def run_command(self, command: str, what: str) -> str:
        return run_command(command, what, self.args.cmd_timeout, self.say)
