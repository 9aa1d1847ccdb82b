"""The API over HTTP, as every step talks to it: one authenticated client, and the waits
that turn an asynchronous answer (a task id) into its outcome without ever hanging."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import httpx

from .common import (
    API_HINT,
    FINAL,
    POLL_INTERVAL,
    TOKEN_HINT,
    Fail,
    describe,
    detail,
    error_text,
    megabytes,
)


@dataclass
class Waited:
    status: dict[str, Any] | None
    states: list[str]
    timed_out: bool
    elapsed: float

    @property
    def state(self) -> str:
        return str(self.status["state"]) if self.status else "unknown"


class Session:
    """Shared by all steps so that they reuse one connection pool and report HTTP trouble
    (refused token, API down, timeouts) in the same words with the same hints."""

    def __init__(self, args: argparse.Namespace, say: Callable[[str], None]) -> None:
        self.args = args
        self.say = say
        self.headers = {"Authorization": f"Bearer {args.token}"}
        self.http = httpx.Client(
            base_url=args.base_url, headers=self.headers, timeout=args.http_timeout
        )

    def close(self) -> None:
        self.http.close()

    def http_reason(self, exc: httpx.HTTPError) -> str:
        if isinstance(exc, httpx.ConnectError):
            return f"cannot connect to {self.args.base_url}: {exc}; {API_HINT}"
        if isinstance(exc, httpx.TimeoutException):
            return f"no answer within {self.args.http_timeout:g} s ({type(exc).__name__})"
        return f"{type(exc).__name__}: {exc}"

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

    def register(
        self, content: bytes | BinaryIO, size: int, name: str, dataset: str, keys: str
    ) -> int:
        """Upload a file and return its id; a large upload is registered by a task (202),
        which is waited for, so callers get an id either way."""
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

    def submit_sync(
        self, file_id: int, client: httpx.Client | None = None
    ) -> tuple[dict[str, Any], float]:
        """Submit a sync of the file and time the submission; ``client`` lets the
        concurrency runs submit over their own, larger, connection pool."""
        started = time.perf_counter()
        response = (client or self.http).post(
            "/api/data-sync/sync-single-file", json={"file_id": file_id, "priority": 5}
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        if response.status_code == 404:
            raise Fail(f"no file with id {file_id} (404): {detail(response)}", "HTTP 404")
        body: dict[str, Any] = self.expect(response, 202)
        return body, elapsed_ms
