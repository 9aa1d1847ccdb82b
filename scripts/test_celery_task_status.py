#!/usr/bin/env python3
"""Prove that a running syncq deployment works, from the outside: task submission, status,
cancel, recovery and performance, over HTTP (and Redis itself for the memory check).

Runs, in order, and reports every item as passed, failed or skipped, with the reason:

  1. Health       GET /health, and the worker round-trip GET /api/tasks/health-check
  2. Submit       POST /api/data-sync/sync-single-file; records the task id
  3. Status       polls /api/data-sync/task-status/{id} to a final state, showing progress
  4. Cancel       submits another sync and cancels it at once: REVOKED, and it stays so
  5. Recovery     a long sync; the worker restarted under it (--restart-worker-cmd); the
                  task still finishes, with every row synced once
  6. Performance  submit latency p50/p95/p99, N concurrent tasks all finished (none lost),
                  Redis memory (INFO memory; needs --redis-url or REDIS_URL)
  7. Degraded     only with --allow-redis-stop-cmd: once the queues are idle, Redis is
                  stopped and a submission runs on the API's local executor; Redis started
                  again (--redis-start-cmd), a worker answers and Celery takes over

Progress goes to stderr while it runs; the report (tables, or one JSON document with
--json) goes to stdout. Every wait has a timeout, so it never hangs.
Exit status: 0 when nothing failed, 1 when something failed, 2 for a usage error.

Side effects on the deployment: unless --file-id or --upload is given, generated CSV files
(columns id,name,value) are registered in new datasets named status-check-<run id>[-…],
and synced; the performance step submits system.noop tasks (or syncs, --perf-task sync).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

import httpx
import redis

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
FINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
RUNNING = frozenset({"STARTED", "PROGRESS"})

WORKER_HINT = (
    "is a worker running? start one with "
    "`celery -A backend.celery_app worker -Q database,data_sync,scheduled,default` "
    "(./scripts/start.sh starts the API and a worker together)"
)
API_HINT = "is the API running? start it with ./scripts/start.sh (or uvicorn backend.main:app)"
TOKEN_HINT = "the token was refused: pass --token or set API_TOKEN to one of the API's API_TOKENS"
REDIS_HINT = "the API cannot reach Redis: check REDIS_URL and that redis-server is running"
DATABASE_HINT = "the API cannot reach its database: check DATABASE_URL"
REDIS_PASSWORD_HINT = (
    "give its password in --redis-url (redis://:PASSWORD@host:port/0); the Redis that "
    "scripts/start_celery_services.py starts keeps its password in data/redis_password"
)

CANCEL_ROWS = 20_000  # big enough that the cancel always lands before the sync ends
POLL_INTERVAL = 0.25
MAX_CONCURRENCY = 1000  # one thread (and connection) per task submitted at once
HEALTH_WAIT = 30.0  # for /health to notice the broker going down or coming back
IDLE_WAIT = 30.0  # for in-flight messages to drain before Redis is stopped


# -- the report -----------------------------------------------------------------------------


@dataclass
class Item:
    item: str
    status: str
    result: str = ""
    target: str = ""
    reason: str = ""


@dataclass
class Group:
    step: int
    name: str
    items: list[Item] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.step}. {self.name}"


@dataclass
class Report:
    base_url: str
    run_id: str
    started_at: str
    groups: list[Group] = field(default_factory=list)
    duration_s: float = 0.0
    interrupted: bool = False

    def counts(self) -> dict[str, int]:
        counts = {PASSED: 0, FAILED: 0, SKIPPED: 0}
        for group in self.groups:
            for item in group.items:
                counts[item.status] += 1
        return counts

    @property
    def ok(self) -> bool:
        return self.counts()[FAILED] == 0 and not self.interrupted

    def to_json(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 2),
            "passed": self.ok,
            "interrupted": self.interrupted,
            "summary": self.counts(),
            "groups": [
                {"step": g.step, "name": g.name, "items": [asdict(i) for i in g.items]}
                for g in self.groups
            ],
        }


COLUMNS = (("item", 34), ("status", 7), ("result", 56), ("target", 26))


def wrap_reason(text: str) -> list[str]:
    return textwrap.wrap(text, width=110, initial_indent="      ", subsequent_indent="        ")


def render(report: Report) -> str:
    """The report as text: a table per group (item, status, result, target), reasons for
    anything failed or skipped under its row, and a summary line."""
    out = [f"syncq task check against {report.base_url} (run {report.run_id})", ""]
    every = [[i.item, i.status.upper(), i.result, i.target] for g in report.groups for i in g.items]
    widths = [  # one set of widths for every table, so they line up
        min(cap, max([len(name), *(len(r[c]) for r in every)]))
        for c, (name, cap) in enumerate(COLUMNS)
    ]
    header = "  " + "  ".join(n.ljust(w) for (n, _), w in zip(COLUMNS, widths, strict=True))
    for group in report.groups:
        rows = [[i.item, i.status.upper(), i.result, i.target] for i in group.items]
        out.append(group.title)
        out.append(header.rstrip())
        out.append("  " + "  ".join("-" * w for w in widths))
        reasons = {i.reason for i in group.items}
        shared = len(group.items) > 1 and len(reasons) == 1 and "" not in reasons
        for item, row in zip(group.items, rows, strict=True):
            cells = [textwrap.wrap(text, w) or [""] for text, w in zip(row, widths, strict=True)]
            for n in range(max(len(c) for c in cells)):
                parts = [
                    (c[n] if n < len(c) else "").ljust(w)
                    for c, w in zip(cells, widths, strict=True)
                ]
                out.append(("  " + "  ".join(parts)).rstrip())
            if item.reason and not shared:
                out.extend(wrap_reason(f"reason: {item.reason}"))
        if shared:
            out.extend(wrap_reason(f"reason (all of them): {group.items[0].reason}"))
        out.append("")
    counts = report.counts()
    verdict = "PASSED" if report.ok else "FAILED"
    if report.interrupted:
        verdict += " (interrupted)"
    out.append(
        f"{verdict}: {counts[PASSED]} passed, {counts[FAILED]} failed, "
        f"{counts[SKIPPED]} skipped in {report.duration_s:.1f} s"
    )
    return "\n".join(out) + "\n"


# -- outcomes of a check ------------------------------------------------------------------


class Fail(Exception):
    def __init__(self, reason: str, result: str = "") -> None:
        super().__init__(reason)
        self.reason, self.result = reason, result


class Skip(Exception):
    pass


@dataclass
class Waited:
    status: dict[str, Any] | None
    states: list[str]
    timed_out: bool
    elapsed: float

    @property
    def state(self) -> str:
        return str(self.status["state"]) if self.status else "unknown"


def describe(status: dict[str, Any]) -> str:
    state = str(status.get("state"))
    progress = status.get("progress") or {}
    if not progress:
        return state
    current, total = progress.get("current"), progress.get("total")
    text = f"{state} {current}/{total}" if total else f"{state} {current}"
    if progress.get("percent") is not None:
        text += f" ({progress['percent']:.0f}%)"
    if progress.get("message"):
        text += f" {progress['message']}"
    return text


def error_text(status: dict[str, Any] | None) -> str:
    error = (status or {}).get("error") or {}
    return f"{error.get('type', '?')}: {error.get('message', '')}" if error else "no error given"


def detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:300]
    return json.dumps(body)[:300]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def generated_csv(rows: int, tag: str) -> bytes:
    lines = [f"{i},item-{i},{tag}-{i % 1000}\n" for i in range(1, rows + 1)]
    return ("id,name,value\n" + "".join(lines)).encode()


def megabytes(n: float) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


# -- the checker ----------------------------------------------------------------------------


class Checker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.run_id = uuid.uuid4().hex[:8]
        self.headers = {"Authorization": f"Bearer {args.token}"}
        self.http = httpx.Client(
            base_url=args.base_url, headers=self.headers, timeout=args.http_timeout
        )
        self.report = Report(
            base_url=args.base_url,
            run_id=self.run_id,
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self.not_ready: str | None = None  # why steps 2 to 7 cannot run
        self.file_id: int | None = None
        self.file_rows: int | None = None  # known when the script made the file
        self.sync_task_id: str | None = None

    # -- output -----------------------------------------------------------------------

    def say(self, message: str) -> None:
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
            item = Item(name, FAILED, "no answer", target, self.http_reason(exc))
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

    def http_reason(self, exc: httpx.HTTPError) -> str:
        if isinstance(exc, httpx.ConnectError):
            return f"cannot connect to {self.args.base_url}: {exc}; {API_HINT}"
        if isinstance(exc, httpx.TimeoutException):
            return f"no answer within {self.args.http_timeout:g} s ({type(exc).__name__})"
        return f"{type(exc).__name__}: {exc}"

    # -- HTTP helpers -----------------------------------------------------------------

    def expect(self, response: httpx.Response, *codes: int) -> Any:
        if response.status_code in codes:
            return response.json()
        what = f"{response.request.method} {response.request.url.path}"
        reason = f"{what} answered {response.status_code}: {detail(response)}"
        if response.status_code == 401:
            reason += f"; {TOKEN_HINT}"
        raise Fail(reason, f"HTTP {response.status_code}")

    def task_status(self, task_id: str, client: httpx.Client | None = None) -> dict[str, Any]:
        response = (client or self.http).get(f"/api/data-sync/task-status/{task_id}")
        body: dict[str, Any] = self.expect(response, 200)
        return body

    def wait_task(
        self,
        task_id: str,
        timeout: float,
        label: str,
        until: Callable[[dict[str, Any]], bool] = lambda s: s["state"] in FINAL,
    ) -> Waited:
        """Poll the task's status until ``until`` holds or ``timeout`` passes, printing each
        change of state or progress. Connection hiccups are retried until the deadline."""
        started = time.monotonic()
        deadline = started + timeout
        states: list[str] = []
        last: dict[str, Any] | None = None
        shown = ""
        while True:
            current: dict[str, Any] | None = None
            try:
                response = self.http.get(f"/api/data-sync/task-status/{task_id}")
            except httpx.TransportError as exc:
                self.say(f"   {label}: {self.http_reason(exc)}; retrying")
            else:
                if response.status_code >= 500:  # e.g. 503 while the database blips
                    self.say(f"   {label}: HTTP {response.status_code}; retrying")
                else:
                    current = last = self.expect(response, 200)
            if current is not None:
                if not states or states[-1] != current["state"]:
                    states.append(str(current["state"]))
                line = describe(current)
                if line != shown:
                    self.say(f"   {label}: {line}")
                    shown = line
                if until(current):
                    return Waited(current, states, False, time.monotonic() - started)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Waited(last, states, True, time.monotonic() - started)
            time.sleep(min(POLL_INTERVAL, remaining))

    def read(self, path: str) -> Any:
        """A read route: 200 with the answer, or 202 with a task whose result it is."""
        response = self.http.get(path)
        body = self.expect(response, 200, 202)
        if response.status_code == 200:
            return body
        waited = self.wait_task(body["task_id"], self.args.task_timeout, f"GET {path}")
        if waited.state != "SUCCESS":
            raise Fail(
                f"the read task for {path} ended {waited.state}: {error_text(waited.status)}"
            )
        return (waited.status or {}).get("result")

    def wait_health(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float
    ) -> tuple[dict[str, Any] | None, float]:
        started = time.monotonic()
        last: dict[str, Any] | None = None
        while time.monotonic() - started < timeout:
            with contextlib.suppress(httpx.TransportError, ValueError):
                last = self.http.get("/health").json()
                if last is not None and predicate(last):
                    return last, time.monotonic() - started
            time.sleep(POLL_INTERVAL)
        return None, time.monotonic() - started

    def register(
        self, content: bytes | BinaryIO, size: int, name: str, dataset: str, keys: str
    ) -> int:
        self.say(f"   uploading {name} ({megabytes(size)}) into dataset {dataset}")
        response = self.http.post(
            "/api/data-sync/files",
            files={"file": (name, content, "text/csv")},
            data={"dataset": dataset, "key_columns": keys},
        )
        body = self.expect(response, 201, 202)
        if response.status_code == 201:
            return int(body["file_id"])
        waited = self.wait_task(body["task_id"], self.args.task_timeout, "registration")
        if waited.timed_out:
            raise Fail(
                f"the registration task is still {waited.state} after "
                f"{self.args.task_timeout:g} s; is a worker consuming the database queue?"
            )
        if waited.state != "SUCCESS":
            raise Fail(f"the registration ended {waited.state}: {error_text(waited.status)}")
        return int((waited.status or {})["result"]["file_id"])

    def generate_and_register(self, rows: int, suffix: str) -> int:
        dataset = f"status-check-{self.run_id}{suffix}"
        self.say(f"   generating a {rows:,}-row CSV")
        content = generated_csv(rows, f"{self.run_id}{suffix}")
        return self.register(content, len(content), f"{dataset}.csv", dataset, "id")

    def submit_sync(
        self, file_id: int, client: httpx.Client | None = None
    ) -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        response = (client or self.http).post(
            "/api/data-sync/sync-single-file", json={"file_id": file_id, "priority": 5}
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        if response.status_code == 404:
            raise Fail(f"no file with id {file_id} (404): {detail(response)}", "HTTP 404")
        body: dict[str, Any] = self.expect(response, 202)
        return body, elapsed_ms

    def submit_perf(self, client: httpx.Client | None = None) -> tuple[str, float, str]:
        """One submission of the performance task: (task id, latency in ms, executor)."""
        if self.args.perf_task == "sync":
            if self.file_id is None:
                raise Fail("no file to sync (the submit step failed)")
            body, ms = self.submit_sync(self.file_id, client)
            return str(body["task_id"]), ms, str(body["executor"])
        started = time.perf_counter()
        response = (client or self.http).post("/api/tasks", json={"name": "system.noop"})
        ms = (time.perf_counter() - started) * 1000
        body = self.expect(response, 202)
        return str(body["task_id"]), ms, str(body["executor"])

    def run_command(self, command: str, what: str) -> str:
        """Run an operator's command (shell=True) with a timeout; Fail unless it exits 0."""
        self.say(f"   running {what}: {command}")
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
                code: int | None = proc.wait(timeout=self.args.cmd_timeout)
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
                f"{what} did not finish within {self.args.cmd_timeout:g} s (killed); "
                f"output: {tail or '(none)'}",
                "timed out",
            )
        if code != 0:
            raise Fail(f"{what} exited {code}; output: {tail or '(none)'}", f"exit {code}")
        return f"exit 0 in {elapsed:.1f} s"

    def worker_answers(self, hint: str) -> str:
        """The worker round-trip, retried until a worker answers or --task-timeout passes."""
        deadline = time.monotonic() + self.args.task_timeout
        last = ""
        while True:
            response = self.http.get(
                "/api/tasks/health-check", timeout=max(self.args.http_timeout, 15)
            )
            if response.status_code == 200:
                body = response.json()
                return f"worker {body.get('worker')} answered in {body.get('latency_ms')} ms"
            last = f"{response.status_code}: {detail(response)}"
            if time.monotonic() >= deadline:
                raise Fail(
                    f"no worker answered for {self.args.task_timeout:g} s ({last}); {hint}",
                    "no worker",
                )
            time.sleep(1)

    def wait_idle(self, timeout: float) -> str:
        """Wait until nothing is queued and the count of delivered-but-unacknowledged
        messages has held still for a second (GET /api/system/queues): a worker killed
        earlier leaves its message there until the visibility timeout, so that count
        need not reach zero. Never fails: a busy deployment only makes the fault that
        follows less clean."""
        started = time.monotonic()
        seen: tuple[int, int] | None = None
        since = started
        while time.monotonic() - started < timeout:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = self.http.get("/api/system/queues")
                if response.status_code != 200:
                    return f"queues not readable (HTTP {response.status_code})"
                body = response.json()
                now = (
                    sum(int(n) for n in (body.get("queues") or {}).values()),
                    int(body.get("unacked") or 0),
                )
                if now != seen:
                    seen, since = now, time.monotonic()
                elif now[0] == 0 and time.monotonic() - since >= 1.0:
                    return f"queues idle after {time.monotonic() - started:.1f} s"
            time.sleep(POLL_INTERVAL)
        busy = f"{seen[0]} queued, {seen[1]} unacknowledged" if seen else "unknown"
        return f"still busy after {timeout:g} s ({busy})"

    # -- 1. health --------------------------------------------------------------------

    def step_health(self) -> None:
        group = self.group(1, "Health")
        health: dict[str, Any] = {}

        def api() -> str:
            try:
                response = httpx.get(f"{self.args.base_url}/health", timeout=self.args.http_timeout)
            except httpx.HTTPError as exc:
                self.not_ready = "the API is not answering"
                raise Fail(self.http_reason(exc), "not answering") from None
            if response.status_code != 200:
                self.not_ready = "the API's /health is not 200"
                raise Fail(
                    f"GET /health answered {response.status_code}: {detail(response)}; {API_HINT}",
                    f"HTTP {response.status_code}",
                )
            health.update(response.json())
            result = (
                f"{health.get('status')}: broker {health.get('broker')}, database "
                f"{health.get('database')}, executor {health.get('executor')}, "
                f"workers {health.get('workers')}"
            )
            hints = []
            if health.get("broker") != "up":
                hints.append(REDIS_HINT + " (tasks run on the API's local executor meanwhile)")
            if health.get("database") != "up":
                hints.append(DATABASE_HINT)
                self.not_ready = "the API's database is down"
            if hints:
                raise Fail("; ".join(hints), result)
            return result

        self.check(group, "GET /health", 'status "ok"', api)
        if self.not_ready:
            self.skip(group, "worker round-trip", "200 within 5 s", self.not_ready)
            return

        def worker() -> str:
            response = self.http.get(
                "/api/tasks/health-check", timeout=max(self.args.http_timeout, 15)
            )
            if response.status_code == 200:
                body = response.json()
                return f"worker {body.get('worker')} answered in {body.get('latency_ms')} ms"
            if response.status_code == 401:
                self.not_ready = "the token was refused"
                raise Fail(f"401: {detail(response)}; {TOKEN_HINT}", "HTTP 401")
            if response.status_code == 503:
                self.not_ready = "no worker answered the health check"
                hint = REDIS_HINT if health.get("broker") != "up" else WORKER_HINT
                raise Fail(f"503: {detail(response)}; {hint}", "no worker answered")
            self.not_ready = f"the health check answered {response.status_code}"
            raise Fail(
                f"{response.status_code}: {detail(response)}", f"HTTP {response.status_code}"
            )

        self.check(group, "worker round-trip", "200 within 5 s", worker)

    # -- 2. submit --------------------------------------------------------------------

    def step_submit(self) -> None:
        group = self.group(2, "Submit")
        if self.not_ready:
            self.skip(group, "file to sync", "a registered file", f"not run: {self.not_ready}")
            self.skip(
                group,
                "submit a sync",
                "202 with a task id",
                f"not run: {self.not_ready}",
            )
            return

        def prepare() -> str:
            if self.args.file_id is not None:
                self.file_id = self.args.file_id
                return f"file {self.file_id} (--file-id)"
            if self.args.upload is not None:
                path: Path = self.args.upload
                dataset = self.args.dataset or f"status-check-{self.run_id}"
                with path.open("rb") as f:  # streamed, not read into memory
                    self.file_id = self.register(
                        f, path.stat().st_size, path.name, dataset, self.args.key_columns
                    )
                return f"file {self.file_id} ({path.name} uploaded into {dataset})"
            self.file_id = self.generate_and_register(self.args.rows, "")
            self.file_rows = self.args.rows
            return f"file {self.file_id} (generated, {self.args.rows:,} rows)"

        if not self.check(group, "file to sync", "a registered file", prepare):
            self.skip(
                group,
                "submit a sync",
                "202 with a task id",
                "no file to sync",
            )
            return

        def submit() -> str:
            assert self.file_id is not None
            body, ms = self.submit_sync(self.file_id)
            self.sync_task_id = str(body["task_id"])
            if body.get("status") != "PENDING":
                raise Fail(
                    f"status {body.get('status')!r}, expected PENDING", f"task {self.sync_task_id}"
                )
            return f"task {self.sync_task_id} on {body.get('executor')} in {ms:.0f} ms"

        self.check(group, "submit a sync", "202 with a task id", submit)

    # -- 3. status --------------------------------------------------------------------

    def step_status(self) -> None:
        group = self.group(3, "Status")
        names = [
            ("reaches a final state", f"SUCCESS within {self.args.task_timeout:g} s"),
            ("progress reported", "current/total of rows"),
            ("sync result", "every row read and stored"),
            ("unknown task id", "404"),
        ]
        if self.not_ready or self.sync_task_id is None:
            why = f"not run: {self.not_ready}" if self.not_ready else "no task was submitted"
            for name, target in names:
                self.skip(group, name, target, why)
            return
        task_id = self.sync_task_id
        final: dict[str, Any] = {}

        def reaches_final() -> str:
            waited = self.wait_task(task_id, self.args.task_timeout, f"task {task_id[:8]}")
            trail = " -> ".join(waited.states)
            if waited.timed_out:
                raise Fail(
                    f"still {waited.state} after {self.args.task_timeout:g} s; is a worker "
                    "consuming the data_sync queue?",
                    trail,
                )
            final.update(waited.status or {})
            if waited.state != "SUCCESS":
                raise Fail(f"ended {waited.state}: {error_text(waited.status)}", trail)
            return f"{waited.state} in {waited.elapsed:.1f} s ({trail})"

        self.check(group, names[0][0], names[0][1], reaches_final)

        def progress() -> str:
            if not final:
                raise Skip("the task did not finish")
            p = final.get("progress")
            if not p:
                raise Fail("the finished sync has no progress", "none")
            text = f"{p.get('current')}/{p.get('total')}"
            if p.get("current") != p.get("total"):
                raise Fail("a finished sync should have its progress at its total", text)
            return f"{text}: {p.get('message')}"

        self.check(group, names[1][0], names[1][1], progress)

        def result() -> str:
            if not final or final.get("state") != "SUCCESS":
                raise Skip("the task did not succeed")
            r = final.get("result") or {}
            text = (
                f"{r.get('rows_read')} read: {r.get('inserted')} inserted, {r.get('updated')} "
                f"updated, {r.get('unchanged')} unchanged, {r.get('rejected')} rejected"
            )
            stored = sum(int(r.get(k) or 0) for k in ("inserted", "updated", "unchanged"))
            if self.file_rows is not None and (
                r.get("rows_read") != self.file_rows or stored != self.file_rows
            ):
                raise Fail(f"the generated file has {self.file_rows} rows", text)
            return text

        self.check(group, names[2][0], names[2][1], result)

        def unknown() -> str:
            response = self.http.get(f"/api/data-sync/task-status/{uuid.uuid4()}")
            if response.status_code != 404:
                raise Fail(
                    f"an unknown id answered {response.status_code}, not 404",
                    f"HTTP {response.status_code}",
                )
            return "404"

        self.check(group, names[3][0], names[3][1], unknown)

    # -- 4. cancel --------------------------------------------------------------------

    def step_cancel(self) -> None:
        group = self.group(4, "Cancel")
        names = [
            ("cancel a sync at once", "202, state REVOKED"),
            ("cancel sticks", f"still REVOKED after {self.args.cancel_settle:g} s"),
            ("cancel of a finished task", "409"),
        ]
        if self.not_ready:
            for name, target in names:
                self.skip(group, name, target, f"not run: {self.not_ready}")
            return
        cancelled: dict[str, str] = {}

        def cancel() -> str:
            if self.args.file_id is not None or self.args.upload is not None:
                if self.file_id is None:
                    raise Skip("no file to sync")
                file_id = self.file_id
            else:
                file_id = self.generate_and_register(CANCEL_ROWS, "-cancel")
            body, _ = self.submit_sync(file_id)
            task_id = str(body["task_id"])
            response = self.http.delete(f"/api/data-sync/cancel-task/{task_id}")
            if response.status_code == 409:
                raise Fail(
                    f"the sync had already finished (409: {detail(response)}) when the cancel "
                    "arrived; a bigger file makes this check meaningful",
                    "HTTP 409",
                )
            answer = self.expect(response, 202)
            cancelled["task_id"] = task_id
            if answer.get("state") != "REVOKED":
                raise Fail(
                    f"the cancel answered state {answer.get('state')}", str(answer.get("state"))
                )
            return f"task {task_id} REVOKED"

        self.check(group, names[0][0], names[0][1], cancel)

        def sticks() -> str:
            if "task_id" not in cancelled:
                raise Skip("nothing was cancelled")
            time.sleep(self.args.cancel_settle)
            status = self.task_status(cancelled["task_id"])
            if status["state"] != "REVOKED":
                raise Fail(f"the cancelled task is {status['state']} now", str(status["state"]))
            return f"REVOKED, attempts {status.get('attempts')}"

        self.check(group, names[1][0], names[1][1], sticks)

        def finished() -> str:
            if self.sync_task_id is None:
                raise Skip("no finished task to cancel")
            status = self.task_status(self.sync_task_id)
            if status["state"] not in FINAL:
                raise Skip(f"the submitted task is still {status['state']}")
            response = self.http.delete(f"/api/data-sync/cancel-task/{self.sync_task_id}")
            if response.status_code != 409:
                raise Fail(
                    f"cancelling a {status['state']} task answered {response.status_code}",
                    f"HTTP {response.status_code}",
                )
            return "409"

        self.check(group, names[2][0], names[2][1], finished)

    # -- 5. recovery ------------------------------------------------------------------

    def step_recovery(self) -> None:
        group = self.group(5, "Recovery")
        names = [
            ("long sync under way", "running when the restart begins"),
            ("restart the worker (command)", "exit 0"),
            ("task finishes after the restart", f"SUCCESS within {self.args.recovery_timeout:g} s"),
            ("every row synced once", f"{self.args.recovery_rows:,} records"),
            ("worker answers after the restart", "200 within 5 s"),
        ]
        why = None
        if self.not_ready:
            why = f"not run: {self.not_ready}"
        elif not self.args.restart_worker_cmd:
            why = "no --restart-worker-cmd given"
        if why:
            for name, target in names:
                self.skip(group, name, target, why)
            return
        rows = self.args.recovery_rows
        dataset = f"status-check-{self.run_id}-long"
        task: dict[str, Any] = {}

        def under_way() -> str:
            file_id = self.generate_and_register(rows, "-long")
            body, _ = self.submit_sync(file_id)
            task["id"] = task_id = str(body["task_id"])
            waited = self.wait_task(
                task_id,
                self.args.task_timeout,
                f"long sync {task_id[:8]}",
                until=lambda s: (
                    s["state"] in FINAL
                    or (
                        s["state"] in RUNNING
                        and ((s.get("progress") or {}).get("current") or 0) > 0
                    )
                ),
            )
            if waited.timed_out:
                raise Fail(
                    f"still {waited.state} after {self.args.task_timeout:g} s; {WORKER_HINT}",
                    waited.state,
                )
            if waited.state in FINAL:
                task.clear()
                raise Fail(
                    f"the sync ended {waited.state} before the restart; raise --recovery-rows "
                    "so that it is still running when the worker is restarted",
                    waited.state,
                )
            return f"task {task_id}: {describe(waited.status or {})}"

        if not self.check(group, names[0][0], names[0][1], under_way):
            for name, target in names[1:]:
                self.skip(group, name, target, "no long sync was running")
            return
        restarted_at = time.monotonic()
        self.check(
            group,
            names[1][0],
            names[1][1],
            lambda: self.run_command(self.args.restart_worker_cmd, "the restart command"),
        )
        task_id = task["id"]
        final: dict[str, Any] = {}

        def finishes() -> str:
            waited = self.wait_task(task_id, self.args.recovery_timeout, f"long sync {task_id[:8]}")
            after = time.monotonic() - restarted_at
            if waited.timed_out:
                raise Fail(
                    f"still {describe(waited.status or {})} {after:.0f} s after the restart: the "
                    "task was not recovered (is a worker running again? recovery waits for the "
                    "task's lease, LEASE_SECONDS, to expire)",
                    waited.state,
                )
            final.update(waited.status or {})
            if waited.state != "SUCCESS":
                raise Fail(f"ended {waited.state}: {error_text(waited.status)}", waited.state)
            attempts = final.get("attempts")
            how = "resumed on a new attempt" if (attempts or 0) > 1 else "not interrupted"
            return f"SUCCESS {after:.1f} s after the restart, attempt {attempts} ({how})"

        self.check(group, names[2][0], names[2][1], finishes)

        def once() -> str:
            if final.get("state") != "SUCCESS":
                raise Skip("the task did not succeed")
            r = final.get("result") or {}
            info = self.read(f"/api/data-sync/datasets/{dataset}")
            count = (info or {}).get("record_count")
            text = f"{count} records; {r.get('rows_read')} read, {r.get('inserted')} inserted"
            if count != rows or r.get("rows_read") != rows or r.get("inserted") != rows:
                raise Fail(f"expected {rows} rows read, inserted and stored, once each", text)
            return text

        self.check(group, names[3][0], names[3][1], once)

        self.check(group, names[4][0], names[4][1], lambda: self.worker_answers(WORKER_HINT))

    # -- 6. performance ---------------------------------------------------------------

    def step_performance(self) -> None:
        group = self.group(6, "Performance")
        target_ms = self.args.latency_target_ms
        endpoint = (
            "POST /api/tasks system.noop"
            if self.args.perf_task == "noop"
            else "POST /api/data-sync/sync-single-file"
        )
        if self.not_ready:
            for p in (50, 95, 99):
                self.skip(
                    group,
                    f"submit latency p{p}",
                    f"< {target_ms:g} ms",
                    f"not run: {self.not_ready}",
                )
            for n in self.args.concurrency_levels:
                self.skip(
                    group,
                    f"{n} concurrent tasks",
                    "all SUCCESS, none lost",
                    f"not run: {self.not_ready}",
                )
        else:
            self.latency(group, endpoint, target_ms)
            for n in self.args.concurrency_levels:
                self.check(
                    group,
                    f"{n} concurrent tasks",
                    "all SUCCESS, none lost",
                    functools.partial(self.concurrent, n),
                )
        self.check(
            group,
            "Redis memory (INFO memory)",
            f"< {self.args.redis_memory_target_mb:g} MB",
            self.redis_memory,
        )

    def latency(self, group: Group, endpoint: str, target_ms: float) -> None:
        samples: list[float] = []
        task_ids: list[str] = []
        n = self.args.latency_samples
        self.say(f"   measuring {n} sequential submissions ({endpoint})")
        try:
            for _ in range(n):
                task_id, ms, _executor = self.submit_perf()
                samples.append(ms)
                task_ids.append(task_id)
        except (Fail, httpx.HTTPError) as exc:
            reason = exc.reason if isinstance(exc, Fail) else self.http_reason(exc)
            for p in (50, 95, 99):
                group.items.append(
                    Item(
                        f"submit latency p{p}",
                        FAILED,
                        f"{len(samples)}/{n} submitted",
                        f"< {target_ms:g} ms",
                        reason,
                    )
                )
            self.say(f"   submit latency: FAILED ({reason})")
            return
        for p in (50, 95, 99):
            value = percentile(samples, p)

            def measured(value: float = value, p: int = p) -> str:
                text = f"{value:.1f} ms (n={n}, {endpoint})"
                if value >= target_ms:
                    raise Fail(f"p{p} is over the {target_ms:g} ms bar", text)
                return text

            self.check(group, f"submit latency p{p}", f"< {target_ms:g} ms", measured)
        # Let those tasks drain, so they neither count in nor slow the concurrency runs.
        self.check(
            group,
            f"the {n} latency tasks finished",
            "all SUCCESS, none lost",
            lambda: self.finish_all(task_ids, time.monotonic(), None),
        )

    def concurrent(self, n: int) -> str:
        limits = httpx.Limits(max_connections=n + 5, max_keepalive_connections=n + 5)
        barrier = threading.Barrier(n)
        with (
            httpx.Client(
                base_url=self.args.base_url,
                headers=self.headers,
                timeout=self.args.http_timeout,
                limits=limits,
            ) as client,
            ThreadPoolExecutor(max_workers=n) as pool,
        ):

            def one(_: int) -> tuple[str, float, str] | str:
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(timeout=30)  # all at once
                try:
                    return self.submit_perf(client)
                except Fail as exc:
                    return exc.reason
                except httpx.HTTPError as exc:
                    return self.http_reason(exc)

            self.say(f"   submitting {n} tasks at once")
            started = time.monotonic()
            outcomes = list(pool.map(one, range(n)))
            submitted_in = time.monotonic() - started
            errors = [o for o in outcomes if isinstance(o, str)]
            ids = [o[0] for o in outcomes if not isinstance(o, str)]
            if errors:
                raise Fail(
                    f"{len(errors)} of {n} submissions failed; first: {errors[0]}",
                    f"{len(ids)}/{n} accepted",
                )
            return self.finish_all(ids, started, submitted_in, client, pool)

    def finish_all(
        self,
        ids: list[str],
        started: float,
        submitted_in: float | None,
        client: httpx.Client | None = None,
        pool: ThreadPoolExecutor | None = None,
    ) -> str:
        """Wait until every task is final; passes when all succeeded (none lost)."""
        n = len(ids)
        states: dict[str, str] = {}
        pending = list(ids)
        deadline = time.monotonic() + self.args.concurrency_timeout
        shown = -1

        def state_of(task_id: str) -> tuple[str, str | None]:
            try:
                return task_id, str(self.task_status(task_id, client)["state"])
            except (Fail, httpx.HTTPError):
                return task_id, None

        while pending and time.monotonic() < deadline:
            answers = list(pool.map(state_of, pending)) if pool else [state_of(t) for t in pending]
            for task_id, state in answers:
                if state in FINAL:
                    states[task_id] = state
            pending = [t for t in pending if t not in states]
            if len(states) != shown:
                shown = len(states)
                self.say(f"   {shown}/{n} finished")
            if pending:
                time.sleep(0.5)
        elapsed = time.monotonic() - started
        by_state: dict[str, int] = {}
        for state in states.values():
            by_state[state] = by_state.get(state, 0) + 1
        done = by_state.get("SUCCESS", 0)
        text = f"{done}/{n} SUCCESS in {elapsed:.1f} s"
        if submitted_in is not None:
            text += f" (all submitted in {submitted_in:.1f} s)"
        if pending:
            raise Fail(
                f"{len(pending)} of {n} not finished after {self.args.concurrency_timeout:g} s "
                f"(e.g. {pending[0]})",
                text,
            )
        if done != n:
            others = ", ".join(f"{k} {v}" for k, v in sorted(by_state.items()) if k != "SUCCESS")
            raise Fail(f"not all succeeded: {others}", text)
        return text

    def redis_memory(self) -> str:
        url = self.args.redis_url
        if not url:
            raise Skip("no --redis-url given (and REDIS_URL is not set)")
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            info = client.info("memory")
        except redis.AuthenticationError as exc:
            reason = f"{redact(url)} refused us: {exc}; {REDIS_PASSWORD_HINT}"
            raise Fail(reason, "refused") from None
        except redis.RedisError as exc:
            raise Fail(
                f"cannot read INFO memory from {redact(url)}: {exc}", "unreachable"
            ) from None
        finally:
            client.close()
        used = float(info["used_memory"])
        text = (
            f"used {megabytes(used)}, peak {megabytes(float(info.get('used_memory_peak', used)))}"
        )
        maxmemory = int(info.get("maxmemory") or 0)
        text += f", maxmemory {megabytes(maxmemory) if maxmemory else 'unlimited'}"
        if used >= self.args.redis_memory_target_mb * 1024 * 1024:
            raise Fail(f"Redis uses more than {self.args.redis_memory_target_mb:g} MB", text)
        return text

    # -- 7. degraded mode -------------------------------------------------------------

    def step_degraded(self) -> None:
        group = self.group(7, "Degraded mode")
        if not self.args.allow_redis_stop_cmd:
            self.skip(
                group,
                "Redis stopped and started again",
                "local executor, then Celery",
                "not requested: pass --allow-redis-stop-cmd and --redis-start-cmd",
            )
            return
        if self.not_ready:
            self.skip(
                group,
                "Redis stopped and started again",
                "local executor, then Celery",
                f"not run: {self.not_ready}",
            )
            return
        local: dict[str, Any] = {}
        try:

            def stop() -> str:
                # Work in flight when Redis goes away is a different fault (see the recovery
                # step); let it drain so this step checks the fallback itself.
                idle = self.wait_idle(IDLE_WAIT)
                self.say(f"   {idle}")
                done = self.run_command(self.args.allow_redis_stop_cmd, "the Redis stop command")
                return f"{done}; {idle}"

            if not self.check(group, "stop Redis (command)", "exit 0", stop):
                return

            def sees_down() -> str:
                found, waited = self.wait_health(lambda h: h.get("broker") == "down", HEALTH_WAIT)
                if found is None:
                    raise Fail(
                        f"/health still says the broker is up after {HEALTH_WAIT:g} s; did the "
                        "command stop the Redis the API uses?",
                        "broker up",
                    )
                return f"broker down, executor {found.get('executor')} after {waited:.1f} s"

            self.check(group, "API notices Redis is down", "broker down in /health", sees_down)

            def submit_down() -> str:
                task_id, ms, executor = self.submit_degraded()
                local["id"] = task_id
                text = f"task {task_id} on {executor} in {ms:.0f} ms"
                if executor != "local":
                    raise Fail(f"executor {executor!r}, expected 'local'", text)
                return text

            self.check(group, "submit with Redis down", '202, executor "local"', submit_down)

            def runs_locally() -> str:
                if "id" not in local:
                    raise Skip("nothing was submitted")
                waited = self.wait_task(
                    local["id"], self.args.task_timeout, f"local task {local['id'][:8]}"
                )
                status = waited.status or {}
                text = f"{waited.state} on {status.get('executor')} in {waited.elapsed:.1f} s"
                if waited.timed_out:
                    raise Fail(f"not finished after {self.args.task_timeout:g} s", text)
                if waited.state != "SUCCESS" or status.get("executor") != "local":
                    raise Fail(
                        f"expected SUCCESS on the local executor: {error_text(status)}", text
                    )
                return text

            self.check(group, "runs on the local executor", "SUCCESS, executor local", runs_locally)
        finally:
            self.restart_redis(group)

    def submit_degraded(self) -> tuple[str, float, str]:
        if self.file_id is not None:
            body, ms = self.submit_sync(self.file_id)
            return str(body["task_id"]), ms, str(body["executor"])
        started = time.perf_counter()
        body = self.expect(self.http.post("/api/tasks", json={"name": "system.noop"}), 202)
        return str(body["task_id"]), (time.perf_counter() - started) * 1000, str(body["executor"])

    def restart_redis(self, group: Group) -> None:
        if not self.check(
            group,
            "start Redis again (command)",
            "exit 0",
            lambda: self.run_command(self.args.redis_start_cmd, "the Redis start command"),
        ):
            return

        def sees_up() -> str:
            found, waited = self.wait_health(lambda h: h.get("broker") == "up", HEALTH_WAIT * 2)
            if found is None:
                raise Fail(
                    f"/health still says the broker is down after {HEALTH_WAIT * 2:g} s; "
                    f"{REDIS_HINT}",
                    "broker down",
                )
            return f"broker up, executor {found.get('executor')} after {waited:.1f} s"

        if not self.check(group, "API notices Redis is back", "broker up in /health", sees_up):
            return
        self.check(
            group,
            "worker answers again",
            "200 within 5 s",
            lambda: self.worker_answers(
                "did the worker survive losing Redis? look for 'Unrecoverable error' in its "
                f"log; {WORKER_HINT}"
            ),
        )

        def celery_again() -> str:
            task_id, _, executor = self.submit_degraded()
            if executor != "celery":
                raise Fail(
                    f"a new task went to {executor!r}, not Celery", f"task {task_id} on {executor}"
                )
            waited = self.wait_task(task_id, self.args.task_timeout, f"task {task_id[:8]}")
            status = waited.status or {}
            text = f"{waited.state} on {status.get('executor')} in {waited.elapsed:.1f} s"
            if waited.timed_out:
                raise Fail(
                    f"not finished after {self.args.task_timeout:g} s; did the worker "
                    "reconnect to Redis?",
                    text,
                )
            if waited.state != "SUCCESS" or status.get("executor") != "celery":
                raise Fail(f"expected SUCCESS on Celery: {error_text(status)}", text)
            return text

        self.check(group, "Celery takes over again", "SUCCESS, executor celery", celery_again)

    # -- all of it --------------------------------------------------------------------

    def run(self) -> Report:
        try:
            self.step_health()
            self.step_submit()
            self.step_status()
            self.step_cancel()
            self.step_recovery()
            self.step_performance()
            self.step_degraded()
        except KeyboardInterrupt:
            self.report.interrupted = True
            self.say("interrupted")
        finally:
            self.http.close()
            self.report.duration_s = time.monotonic() - self.t0
        return self.report


# -- command line ---------------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text}")
    return value


def levels(text: str) -> list[int]:
    try:
        found = [positive_int(part.strip()) for part in text.split(",") if part.strip()]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"comma-separated counts, e.g. 10,100 ({exc})") from None
    if any(n > MAX_CONCURRENCY for n in found):
        raise argparse.ArgumentTypeError(f"at most {MAX_CONCURRENCY} tasks at once")
    return found


EPILOG = """\
examples:
  API_TOKEN=$(cat data/api_token) %(prog)s --base-url http://127.0.0.1:8000
  API_TOKEN=$(cat data/api_token) %(prog)s \\
      --redis-url "redis://:$(cat data/redis_password)@127.0.0.1:6379/0"   # the launcher's Redis
  %(prog)s --token T --redis-url redis://127.0.0.1:6379/0 \\
      --restart-worker-cmd 'systemctl restart syncq-worker' \\
      --allow-redis-stop-cmd 'redis-cli -p 6379 shutdown nosave' \\
      --redis-start-cmd 'systemctl start redis' --json > report.json

commands (--restart-worker-cmd, --allow-redis-stop-cmd, --redis-start-cmd) run through
the shell with a timeout (--cmd-timeout); they must return once their work is done (start
long-running processes in the background or through your service manager).
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="test_celery_task_status.py",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_argument_group("the deployment")
    target.add_argument(
        "--base-url", default="http://127.0.0.1:8000", help="the API (default: %(default)s)"
    )
    target.add_argument(
        "--token", default=os.environ.get("API_TOKEN"), help="bearer token (default: $API_TOKEN)"
    )
    target.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="the deployment's Redis, for the memory check (default: $REDIS_URL; skipped without)",
    )
    files = parser.add_argument_group("the file to sync (default: a generated CSV)")
    which = files.add_mutually_exclusive_group()
    which.add_argument("--file-id", type=positive_int, help="sync this registered file")
    which.add_argument(
        "--upload",
        type=Path,
        metavar="FILE",
        help="register FILE (CSV, JSON Lines, XLSX) and sync it",
    )
    files.add_argument("--dataset", help="dataset for --upload (default: status-check-<run id>)")
    files.add_argument(
        "--key-columns", default="id", help="key columns for --upload (default: %(default)s)"
    )
    files.add_argument(
        "--rows",
        type=positive_int,
        default=1000,
        help="rows of the generated file (default: %(default)s)",
    )
    faults = parser.add_argument_group("recovery and degraded mode")
    faults.add_argument(
        "--restart-worker-cmd",
        metavar="CMD",
        help="shell command that restarts (or kills -9 and starts) the Celery worker; step 5 "
        "is skipped without it",
    )
    faults.add_argument(
        "--recovery-rows",
        type=positive_int,
        default=1_000_000,
        help="rows of the long sync restarted under; it must still be running when the "
        "restart begins (default: %(default)s, about 20 s at batches of 5000)",
    )
    faults.add_argument(
        "--recovery-timeout",
        type=positive_float,
        default=300.0,
        help="seconds for the long sync to finish after the restart; recovery first waits "
        "for the task's lease (LEASE_SECONDS) to expire (default: %(default)s)",
    )
    faults.add_argument(
        "--allow-redis-stop-cmd",
        metavar="CMD",
        help="shell command that stops the deployment's Redis; enables step 7 (degraded "
        "mode), which needs --redis-start-cmd too",
    )
    faults.add_argument(
        "--redis-start-cmd",
        metavar="CMD",
        help="shell command that starts that Redis again; always run after the stop command, "
        "whatever happened in between",
    )
    perf = parser.add_argument_group("performance")
    perf.add_argument("--perf-task", choices=["noop", "sync"], default="noop",
                      help="what to submit: system.noop through POST /api/tasks (the bare submit "
                      "path) or syncs of the file (default: %(default)s)")  # fmt: skip
    perf.add_argument(
        "--latency-samples",
        type=positive_int,
        default=100,
        help="sequential submissions timed (default: %(default)s)",
    )
    perf.add_argument(
        "--latency-target-ms",
        type=positive_float,
        default=100.0,
        help="the bar for p50/p95/p99 (default: %(default)s)",
    )
    perf.add_argument(
        "--concurrency-levels",
        type=levels,
        default=[10, 100],
        metavar="N,N",
        help="tasks submitted at once, per run (default: 10,100)",
    )
    perf.add_argument(
        "--concurrency-timeout",
        type=positive_float,
        default=300.0,
        help="seconds for a concurrent run to finish (default: %(default)s)",
    )
    perf.add_argument(
        "--redis-memory-target-mb",
        type=positive_float,
        default=1024.0,
        help="the bar for used_memory (default: %(default)s)",
    )
    timing = parser.add_argument_group("timeouts")
    timing.add_argument(
        "--task-timeout",
        type=positive_float,
        default=120.0,
        help="seconds for a task to finish (default: %(default)s)",
    )
    timing.add_argument(
        "--cancel-settle",
        type=positive_float,
        default=3.0,
        help="seconds a cancelled task must stay REVOKED (default: %(default)s)",
    )
    timing.add_argument(
        "--http-timeout",
        type=positive_float,
        default=30.0,
        help="seconds per HTTP request (default: %(default)s)",
    )
    timing.add_argument(
        "--cmd-timeout",
        type=positive_float,
        default=120.0,
        help="seconds per shell command (default: %(default)s)",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print the report as one JSON document")
    output.add_argument(
        "--json-out", type=Path, metavar="FILE", help="also write the JSON report to FILE"
    )
    output.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    args.base_url = args.base_url.rstrip("/")
    if not args.token:
        parser.error(
            "no token: pass --token or set API_TOKEN "
            "(./scripts/start.sh writes one to data/api_token)"
        )
    if args.allow_redis_stop_cmd and not args.redis_start_cmd:
        parser.error("--allow-redis-stop-cmd needs --redis-start-cmd, to start Redis again")
    if args.upload is not None and not args.upload.is_file():
        parser.error(f"--upload: no such file: {args.upload}")
    if not args.concurrency_levels:
        parser.error("--concurrency-levels: give at least one count")
    if urlsplit(args.base_url).scheme not in ("http", "https"):
        parser.error(f"--base-url must be an http(s) URL: {args.base_url}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Checker(args).run()
    document = report.to_json()
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(document, indent=2) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(render(report))
    sys.stdout.flush()
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
