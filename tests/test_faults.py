"""Invariants under faults: workers killed with -9, Redis stopped or restarted empty,
duplicate deliveries, and a database that cannot be reached."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from celery import Celery

from tests.conftest import StartWorker
from tests.helpers import status, submit, wait_final, wait_state
from tests.support import RETIRING, Api, RedisServer, wait_for

pytestmark = pytest.mark.slow


def test_a_task_whose_worker_is_killed_finishes_on_another_exactly_once(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    doomed = start_worker()
    task = submit(client, "system.sleep", seconds=4, steps=20)
    wait_state(client, task["task_id"], "PROGRESS")

    doomed.kill()
    start_worker()
    done = wait_final(client, task["task_id"], timeout=40)

    assert done["state"] == "SUCCESS"
    assert done["attempts"] == 2
    assert done["result"]["attempt"] == 2
    time.sleep(2)  # nothing runs it a third time
    assert status(client, task["task_id"]) == done


def test_tasks_queued_when_redis_restarts_empty_still_finish(
    client: httpx.Client, start_worker: StartWorker, redis_up: RedisServer
) -> None:
    tasks = [submit(client, "system.noop") for _ in range(5)]
    assert {t["executor"] for t in tasks} == {"celery"}

    redis_up.restart_empty()
    start_worker()

    for t in tasks:
        assert wait_final(client, t["task_id"], timeout=30)["state"] == "SUCCESS"


def test_with_redis_down_tasks_run_locally_and_celery_takes_over_when_it_returns(
    client: httpx.Client, start_worker: StartWorker, redis_up: RedisServer
) -> None:
    start_worker()
    redis_up.kill()

    # Right away, before any health probe noticed: the failed publish falls back.
    started = time.perf_counter()
    first = submit(client, "system.sleep", seconds=0.2, steps=2)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"submission with Redis down took {elapsed:.2f}s"
    assert first["executor"] == "local"

    wait_for(lambda: client.get("/health").json()["broker"] == "down", 5, what="broker down")
    health = client.get("/health").json()
    assert health["executor"] == "local" and health["status"] == "degraded"
    more = [submit(client, "system.noop") for _ in range(5)]
    for t in [first, *more]:
        done = wait_final(client, t["task_id"])
        assert (done["state"], done["executor"]) == ("SUCCESS", "local")

    redis_up.start()
    wait_for(lambda: client.get("/health").json()["broker"] == "up", 10, what="broker up")
    back = submit(client, "system.noop")
    assert back["executor"] == "celery"
    assert wait_final(client, back["task_id"])["executor"] == "celery"


def test_a_cancelled_queued_task_never_runs(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    task = submit(client, "system.sleep", seconds=0.1, steps=1)

    response = client.delete(f"/api/tasks/{task['task_id']}")
    assert response.status_code == 202
    assert response.json()["state"] == "REVOKED"
    start_worker()
    marker = submit(client, "system.noop")  # runs after the cancelled one was consumed
    wait_state(client, marker["task_id"], "SUCCESS")

    after = status(client, task["task_id"])
    assert after["state"] == "REVOKED"
    assert after["attempts"] == 0 and after["started_at"] is None


def test_a_cancelled_running_task_stops_at_its_next_checkpoint(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    start_worker()
    task = submit(client, "system.sleep", seconds=20, steps=100)
    wait_state(client, task["task_id"], "PROGRESS")

    assert client.delete(f"/api/tasks/{task['task_id']}").json()["state"] == "REVOKED"
    marker = submit(client, "system.noop")  # the single worker slot frees up only if it stopped
    wait_state(client, marker["task_id"], "SUCCESS", timeout=10)

    after = status(client, task["task_id"])
    assert after["state"] == "REVOKED"
    assert after["progress"]["current"] < 100


def test_a_cancel_survives_the_worker_dying_and_restarting(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    doomed = start_worker()
    task = submit(client, "system.sleep", seconds=20, steps=100)
    wait_state(client, task["task_id"], "PROGRESS")
    doomed.kill()

    assert client.delete(f"/api/tasks/{task['task_id']}").status_code == 202
    start_worker()
    time.sleep(5)  # longer than the lease plus a sweep: recovery would have re-run it by now

    after = status(client, task["task_id"])
    assert after["state"] == "REVOKED"
    assert after["attempts"] == 1


def test_a_duplicate_delivery_does_nothing(
    client: httpx.Client, start_worker: StartWorker, redis_up: RedisServer
) -> None:
    worker = start_worker()
    task = submit(client, "system.sleep", seconds=1, steps=5)
    wait_state(client, task["task_id"], "PROGRESS")

    # Deliver the same task id again, behind the runtime's back, while it runs and after.
    raw = Celery(broker=redis_up.url)
    again = {"kwargs": {"seconds": 1, "steps": 5}, "task_id": task["task_id"], "queue": "default"}
    raw.send_task("system.sleep", **again)
    done = wait_state(client, task["task_id"], "SUCCESS")
    raw.send_task("system.sleep", **again)
    wait_for(lambda: redis_up.client().llen("default") == 0, 10, what="duplicates consumed")
    marker = submit(client, "system.noop")
    wait_state(client, marker["task_id"], "SUCCESS")

    assert status(client, task["task_id"]) == done
    assert done["attempts"] == 1
    assert worker.tail(400).count(f"{task['task_id']}: not claimable") == 2


def test_submissions_are_503_when_the_database_is_unreachable(
    stack_env: dict[str, str], workdir: Path, redis_up: RedisServer
) -> None:
    broken = Api(
        stack_env | {"DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:9/none"},
        workdir / "logs",
        name="api-no-db",
    )
    broken.start()
    try:
        with broken.client() as c:
            assert c.get("/health").json()["database"] == "down"
            response = c.post("/api/tasks", json={"name": "system.noop"})
            assert response.status_code == 503
            assert response.headers["Retry-After"]
            assert c.get("/api/tasks/anything").status_code == 503
    finally:
        broken.stop()


@pytest.mark.slow
def test_a_message_taken_by_a_worker_that_died_before_starting_it_is_sent_again(
    client: httpx.Client, start_worker: StartWorker, redis_up: RedisServer
) -> None:
    """kill -9 between a worker taking a message and claiming its row leaves the row
    PENDING with its message out of every queue (kombu gives it back only after the
    visibility timeout): the sweep notices the silent worker and sends it again."""
    RETIRING.wait()  # an earlier test's worker, still stopping, must not take the message
    r = redis_up.client()
    task_id = submit(client, "system.noop")["task_id"]
    taken = [k for k in r.scan_iter("default*") if r.delete(k)]  # the worker took it...
    assert taken
    r.zadd("syncq:workers", {"ghost@nowhere": time.time()})  # ...and beat its last

    time.sleep(3)
    assert status(client, task_id)["state"] == "PENDING"  # not overdue yet: nothing re-sent
    start_worker()
    done = wait_state(client, task_id, "SUCCESS", timeout=60)

    assert done["attempts"] == 1
    assert r.zscore("syncq:workers", "ghost@nowhere") is None  # noticed once, then forgotten
