"""The task routes through a real API, a real Redis and real Celery workers."""

from __future__ import annotations

import time

import httpx

from tests.conftest import StartWorker
from tests.helpers import status, submit, wait_final, wait_state
from tests.support import RETIRING, Api, RedisServer


def test_submitted_task_runs_on_a_worker_and_reports_its_result(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    start_worker()
    task = submit(client, "system.sleep", seconds=0.3, steps=3)
    assert task["state"] == "PENDING"
    assert task["executor"] == "celery"

    done = wait_state(client, task["task_id"], "SUCCESS")

    assert done["result"] == {"slept": 0.3, "steps": 3, "attempt": 1}
    assert done["progress"] == {"current": 3, "total": 3, "percent": 100.0, "message": "slept 3/3"}
    assert done["attempts"] == 1
    assert done["started_at"] and done["finished_at"]
    assert client.get(f"/task/{task['task_id']}").json() == done


def test_a_solo_pool_worker_runs_leased_and_atomic_tasks_in_its_main_process(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    """``--pool solo`` has no forked children: the worker's process state (loop, engines,
    announcer) is made on first use in the main process, where beats and the startup
    sweep already ran."""
    start_worker(pool="solo")
    leased = submit(client, "system.sleep", seconds=0.2, steps=2)
    atomic = client.post(
        "/api/conversations/solo-pool/messages", json={"role": "user", "content": "hi"}
    ).json()

    assert wait_state(client, leased["task_id"], "SUCCESS")["result"]["steps"] == 2
    assert wait_state(client, atomic["task_id"], "SUCCESS")["executor"] == "celery"


def test_unknown_task_ids_are_404_not_pending(client: httpx.Client) -> None:
    for path in ("/api/tasks/no-such-task", "/task/no-such-task"):
        response = client.get(path)
        assert response.status_code == 404
        assert "not found" in response.json()["detail"]
    assert client.delete("/api/tasks/no-such-task").status_code == 404


def test_every_route_but_health_wants_a_valid_token(api: Api, client: httpx.Client) -> None:
    with api.client(token=None) as anonymous:
        assert anonymous.get("/health").status_code == 200
        response = anonymous.get("/api/tasks")
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
    with api.client(token="wrong") as stranger:
        assert stranger.get("/api/tasks").status_code == 401
        assert stranger.post("/api/tasks", json={"name": "system.noop"}).status_code == 401
    with api.client(token="second-token") as other:
        assert other.get("/api/tasks").status_code == 200


def test_the_same_idempotency_key_gives_one_task(client: httpx.Client) -> None:
    key = {"Idempotency-Key": f"key-{time.time_ns()}"}
    first = submit(client, "system.noop", headers=key)
    again = submit(client, "system.noop", headers=key)
    other = submit(client, "system.noop", headers={"Idempotency-Key": f"other-{time.time_ns()}"})

    assert again["task_id"] == first["task_id"]
    assert other["task_id"] != first["task_id"]


def test_cancelling_a_finished_task_is_a_conflict(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    start_worker()
    task = submit(client, "system.noop")
    wait_state(client, task["task_id"], "SUCCESS")

    response = client.delete(f"/api/tasks/{task['task_id']}")

    assert response.status_code == 409
    assert status(client, task["task_id"])["state"] == "SUCCESS"


def test_a_transient_error_is_retried_with_backoff(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    start_worker()
    task = submit(client, "system.flaky", transient_failures=2)

    done = wait_final(client, task["task_id"], timeout=30)

    assert done["state"] == "SUCCESS"
    assert done["result"] == {"attempt": 3}
    assert done["attempts"] == 3


def test_bad_submissions_are_422_and_create_nothing(client: httpx.Client) -> None:
    before = len(client.get("/api/tasks", params={"limit": 500}).json())
    bad = [
        {"name": "system.noop", "priority": 10},
        {"name": "system.health_check"},
        {"args": {}},
        {"name": "system.sleep", "args": {"seconds": "soon"}, "priority": -1},
    ]
    for body in bad:
        assert client.post("/api/tasks", json=body).status_code == 422, body
    assert client.post("/api/tasks", json={"name": "no.such.task"}).status_code == 404
    assert client.post("/api/tasks", content=b"\x00garbage").status_code == 422
    assert len(client.get("/api/tasks", params={"limit": 500}).json()) == before


def test_task_list_filters_by_state_and_name(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    start_worker()
    task = submit(client, "system.flaky", transient_failures=0)
    wait_state(client, task["task_id"], "SUCCESS")

    listed = client.get("/api/tasks", params={"name": "system.flaky", "state": "SUCCESS"}).json()

    assert task["task_id"] in [t["task_id"] for t in listed]
    assert {t["name"] for t in listed} == {"system.flaky"}
    assert client.get("/api/tasks", params={"state": "NOPE"}).status_code == 422


def test_the_task_list_is_summaries_without_results(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    start_worker()
    task = submit(client, "system.sleep", seconds=0.1, steps=1)
    done = wait_state(client, task["task_id"], "SUCCESS")

    listed = client.get("/api/tasks", params={"name": "system.sleep", "limit": 500}).json()
    mine = next(t for t in listed if t["task_id"] == task["task_id"])

    assert all("result" not in t for t in listed)
    assert mine == {k: v for k, v in done.items() if k != "result"}
    assert done["result"] == {"slept": 0.1, "steps": 1, "attempt": 1}  # the status keeps it


def test_health_check_is_a_round_trip_through_a_worker(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    worker = start_worker()

    answer = client.get("/api/tasks/health-check").json()

    assert answer["ok"] is True
    assert answer["worker"].startswith(worker.node)
    assert answer["latency_ms"] < 5000
    assert client.get("/health").json()["workers"] >= 1


def test_health_check_is_503_when_no_worker_answers(client: httpx.Client) -> None:
    # The worker an earlier test left stopping may still have the check's message reserved
    # when its SIGTERM lands, and answer it during its warm shutdown (seen in CI-like runs).
    RETIRING.wait()
    response = client.get("/api/tasks/health-check", timeout=20)

    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"]


def test_a_higher_priority_task_queued_later_runs_first(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    low = [submit(client, "system.noop", priority=1) for _ in range(3)]
    high = submit(client, "system.noop", priority=9)
    start_worker()

    for t in [*low, high]:
        wait_state(client, t["task_id"], "SUCCESS")
    started = {t["task_id"]: status(client, t["task_id"])["started_at"] for t in [*low, high]}

    assert started[high["task_id"]] < min(started[t["task_id"]] for t in low)


def test_results_live_in_the_ledger_only_and_every_other_redis_key_expires(
    client: httpx.Client, start_worker: StartWorker, redis_up: RedisServer
) -> None:
    start_worker()
    tasks = [submit(client, "system.noop") for _ in range(3)]
    for t in tasks:
        wait_state(client, t["task_id"], "SUCCESS")
    assert client.get("/api/tasks/health-check").json()["ok"] is True

    r = redis_up.client()
    # Queues (kombu) and the schedule (RedBeat) are meant to persist; see docs/runtime.md.
    persistent = ("_kombu.", "unacked", "default", "database", "data_sync", "scheduled", "redbeat:")
    ours = [k.decode() for k in r.scan_iter() if not k.decode().startswith(persistent)]

    assert not [k for k in ours for t in tasks if k == f"celery-task-meta-{t['task_id']}"]
    assert {k: r.ttl(k) for k in ours if r.ttl(k) <= 0} == {}


def test_a_poll_with_the_etag_it_was_given_is_304_until_the_task_changes(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    task = submit(client, "system.noop")
    first = client.get(f"/api/tasks/{task['task_id']}")
    etag = first.headers["ETag"]

    unchanged = client.get(f"/api/tasks/{task['task_id']}", headers={"If-None-Match": etag})
    start_worker()
    wait_state(client, task["task_id"], "SUCCESS")
    changed = client.get(f"/api/tasks/{task['task_id']}", headers={"If-None-Match": etag})

    assert first.json()["state"] == "PENDING"
    assert (unchanged.status_code, unchanged.content) == (304, b"")
    assert unchanged.headers["ETag"] == etag
    assert changed.status_code == 200
    assert changed.json()["state"] == "SUCCESS"
    assert changed.headers["ETag"] != etag


def test_a_long_poll_answers_as_soon_as_the_task_changes(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    task = submit(client, "system.noop")
    path = f"/api/tasks/{task['task_id']}"
    etag = client.get(path).headers["ETag"]

    started = time.monotonic()
    timed_out = client.get(path, params={"wait": 0.5}, headers={"If-None-Match": etag})
    waited_out = time.monotonic() - started
    start_worker()
    started = time.monotonic()
    answered = client.get(path, params={"wait": 25}, headers={"If-None-Match": etag}, timeout=30)
    waited_for_change = time.monotonic() - started

    assert timed_out.status_code == 304
    assert waited_out >= 0.5
    assert answered.status_code == 200
    assert answered.json()["state"] in {"STARTED", "SUCCESS"}
    assert waited_for_change < 20
    final = client.get(path, params={"wait": 25}, timeout=30).json()
    assert final["state"] == "SUCCESS"
