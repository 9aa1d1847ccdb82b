"""API fuzzing: schemathesis generates requests for every operation in the app's own
OpenAPI schema (positive and negative, its coverage and fuzzing phases) and sends them,
with a valid token, to the live API process, with a real Redis, a real Celery worker and
the real database behind it. Every answer must be a documented status with a body that
matches its documented schema, schema-violating input must be refused, and nothing a
client can send may cause a 5xx (or an unhandled exception in the API's log).

The generator keeps path and query values URL-safe and bodies standard JSON, so a table
of hostile inputs it does not produce (NUL characters, NaN, huge numbers, undecodable or
oversized bodies) is sent by hand as well."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from backend.main import create_app
from tests.support import TOKEN, Api, RedisServer, Worker, serving_worker

AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
]
FUZZ = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases on every run: CI failures reproduce
)
# Operations that take about a second per call by design (a broadcast to every worker
# waits out its timeout): a few examples are enough, they have no parameters.
SLOW_PATHS = ["/api/system/workers"]

OPENAPI = create_app().openapi()
CONFIG = schemathesis.Config.from_dict(
    {
        "headers": AUTH,
        "generation": {
            # Requests without a valid token are tests/test_auth.py's business; here every
            # request carries one, so a case that drops it would be no case at all.
            "with-security-parameters": False,
            # Query parameters the schema does not name are ignored, as HTTP APIs do.
            "allow-extra-parameters": False,
        },
    }
)
schema = schemathesis.openapi.from_dict(OPENAPI, config=CONFIG)


@pytest.fixture(scope="module")
def fuzz_worker(
    stack_env: dict[str, str], workdir: Path, redis_server: RedisServer
) -> Iterator[Worker]:
    """One worker for every test of the module (one per test costs more than the fuzzing)."""
    if not redis_server.alive:
        redis_server.start()
    worker = serving_worker(
        f"fuzz{uuid.uuid4().hex[:6]}", stack_env, workdir / "logs", redis_server, 2
    )
    yield worker
    worker.stop()


@pytest.fixture
def live(api: Api, client: httpx.Client, fuzz_worker: Worker) -> Iterator[Api]:
    """The live API with a worker; after the test, its log must show no unhandled
    exception (a JSON 500 would still be one)."""
    assert fuzz_worker.alive, fuzz_worker.tail()
    start = api.log_path.stat().st_size
    yield api
    with api.log_path.open("rb") as log:
        log.seek(start)
        written = log.read().decode(errors="replace")
    assert "Exception in ASGI application" not in written, written[-5000:]


# Operations with rules no schema can state, so a schema-valid request may rightly be 422:
# a new dataset needs key columns and an existing one keeps its own; only diagnostic tasks
# are submittable, with storable arguments. And the generator sends a nullable header as
# the text "null", which Last-Event-ID's pattern refuses.
BEYOND_SCHEMA = {"POST /api/data-sync/files", "POST /api/tasks", "GET /api/events"}


def _call(case: Case, api: Api) -> None:
    if case.path == "/api/events":  # a stream: end it quickly
        case.query = {**(case.query or {}), "max_seconds": 0.2}
    checks = CHECKS
    if f"{case.method.upper()} {case.path}" in BEYOND_SCHEMA:
        checks = [c for c in CHECKS if c is not positive_data_acceptance]
    case.call_and_validate(base_url=api.base_url, headers=AUTH, checks=checks, timeout=60)


@schema.exclude(path=SLOW_PATHS).parametrize()
@FUZZ
def test_every_operation_answers_as_documented(case: Case, live: Api) -> None:
    _call(case, live)


@schema.include(path=SLOW_PATHS).parametrize()
@settings(FUZZ, max_examples=3)
def test_slow_operations_answer_as_documented(case: Case, live: Api) -> None:
    _call(case, live)


def test_the_live_api_serves_the_schema_that_was_fuzzed(live: Api) -> None:
    with live.client() as c:
        assert c.get("/openapi.json").json() == OPENAPI


NUL = "\x00"
UPLOAD = {"file": ("a.csv", b"a\n1\n")}
TASKS, SYNC, FILES = "/api/tasks", "/api/data-sync/sync-single-file", "/api/data-sync/files"
MESSAGES = "/api/conversations/{}/messages"
NOOP = b'{"name": "system.noop", '
EXPORTS, REPORTS = "/api/data-sync/datasets/x/exports", "/api/data-sync/datasets/x/reports"


def hostile(
    method: str, path: str, expected: int, field: str = "", **request: Any
) -> Any:  # a pytest.param
    if "content" in request:
        request["headers"] = {"Content-Type": "application/json"}
    return pytest.param(method, path, request, expected, field, id=f"{method} {path[:40]} {field}")


# Each of these was a 500 (PostgreSQL refuses NUL in text, NaN is not JSON so a 422 echoing
# it could not be rendered), or was accepted though the schema forbids it.
HOSTILE = [
    hostile("GET", "/api/tasks/%00", 422, "task_id"),
    hostile("GET", "/task/%00", 422, "task_id"),
    hostile("DELETE", "/api/tasks/%00", 422, "task_id"),
    hostile("GET", "/api/data-sync/task-status/%00", 422, "task_id"),
    hostile("DELETE", "/api/data-sync/cancel-task/%00", 422, "task_id"),
    hostile("GET", "/api/tasks/" + "a" * 5000, 422, "task_id"),
    hostile("GET", TASKS, 422, "name", params={"name": NUL}),
    hostile("POST", TASKS, 422, "name", json={"name": NUL}),
    hostile("POST", TASKS, 422, "args", json={"name": "system.noop", "args": {"x": NUL}}),
    hostile("POST", TASKS, 422, "args", json={"name": "system.noop", "args": {NUL: 1}}),
    hostile("POST", TASKS, 422, "args", content=NOOP + b'"args": [NaN]}'),
    hostile("POST", TASKS, 422, "args", content=NOOP + b'"args": {"x": NaN}}'),
    hostile("POST", TASKS, 422, "priority", content=NOOP + b'"priority": NaN}'),
    hostile("POST", TASKS, 422, "priority", json={"name": "system.noop", "priority": True}),
    hostile("POST", SYNC, 422, "file_id", json={"file_id": 10**30}),
    hostile("POST", SYNC, 422, "file_id", json={"file_id": "1"}),
    hostile("POST", SYNC, 422, "file_id", json={"file_id": True}),
    hostile("POST", SYNC, 422, "file_id", content=b'{"file_id": Infinity}'),
    hostile("POST", SYNC, 422, "priority", json={"file_id": 1, "priority": False}),
    hostile("POST", "/api/data-sync/sync-batch", 422, "file_ids", json={"file_ids": [2**63]}),
    hostile("GET", "/api/data-sync/datasets/x/records", 422, "limit", params={"limit": 10**30}),
    hostile("GET", "/api/data-sync/datasets/x/records", 422, "offset", params={"offset": -1}),
    hostile("GET", "/api/data-sync/datasets/%00", 422, "dataset"),
    hostile("POST", FILES, 422, "dataset", data={"dataset": NUL}, files=UPLOAD),
    hostile("POST", FILES, 422, "key_columns", data={"dataset": "d", "key_columns": NUL},
            files=UPLOAD),
    hostile("POST", MESSAGES.format("a"), 422, "content", json={"role": "user", "content": NUL}),
    hostile("POST", MESSAGES.format("%00"), 422, "session_id",
            json={"role": "user", "content": "hi"}),
    hostile("GET", "/api/conversations/abc", 422, "wait", params={"wait": "nan"}),
    hostile("GET", "/history", 422, "session_id", params={"session_id": NUL}),
    hostile("POST", "/run", 422, "session_id", json={"user_input": "hi", "session_id": NUL}),
    hostile("POST", "/run", 422, "user_input", json={"user_input": NUL}),
    hostile("POST", "/run", 422, "user_input", content=b'{"user_input": "\\ud800"}'),
    hostile("POST", TASKS, 422, "args", content=NOOP + b'"args": {"x": "\\udc00"}}'),
    hostile("POST", "/api/schedules/%00/run", 404),
    hostile("POST", EXPORTS, 422, "filter", json={"filter": {"a": NUL}}),
    hostile("POST", EXPORTS, 422, "columns", json={"columns": [NUL]}),
    hostile("POST", REPORTS, 422, "group_by",
            content=b'{"group_by": ["a\\ud800"], "aggregates": [{"op": "count"}]}'),
    hostile("GET", "/api/exports/%00", 422, "export_id"),
    hostile("GET", "/api/exports/%00/download", 422, "export_id"),
    hostile("GET", "/api/reports/x", 422, "format", params={"format": "pdf"}),
    hostile("POST", TASKS, 400, content=b"\xff\xfe{"),
    hostile("POST", TASKS, 400, content=b"[" * 100_000 + b"]" * 100_000),
    hostile("POST", TASKS, 413, content=b" " * (2 << 20)),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "request_args", "expected", "field"), HOSTILE)
def test_hostile_inputs_are_refused_with_a_clear_error(
    live: Api, method: str, path: str, request_args: dict[str, Any], expected: int, field: str
) -> None:
    with live.client() as c:
        response = c.request(method, path, **request_args)
    assert response.status_code == expected, response.text[:500]
    detail = response.json()["detail"]
    assert detail
    if field:
        assert field in {str(part) for issue in detail for part in issue["loc"]}, detail
