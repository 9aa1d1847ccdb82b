"""GET /metrics (issue 15): Prometheus text from every process of the stack, behind the
bearer token unless METRICS_PUBLIC_ON_LOOPBACK says otherwise; and quiet logs (the
broker's state once per change, one line per task outcome)."""

from __future__ import annotations

import io
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import StartBeat, StartWorker
from tests.helpers import submit, wait_final, wait_state
from tests.support import Api, RedisServer, wait_for

QUEUES_USED = ("database", "data_sync", "default")


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prometheus")


@pytest.fixture(scope="module")
def multiproc_env(metrics_dir: Path) -> dict[str, str]:
    """What makes a process write its metrics where the API adds them up."""
    return {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}


@pytest.fixture(scope="module")
def metrics_api(
    stack_env: dict[str, str], multiproc_env: dict[str, str], workdir: Path
) -> Iterator[Api]:
    server = Api(stack_env | multiproc_env, workdir / "logs", name="api-metrics")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def loopback_api(stack_env: dict[str, str], workdir: Path) -> Iterator[Api]:
    env = stack_env | {"METRICS_PUBLIC_ON_LOOPBACK": "true"}
    server = Api(env, workdir / "logs", name="api-metrics-loopback")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(metrics_api: Api, redis_up: RedisServer) -> Iterator[httpx.Client]:
    with metrics_api.client() as c:
        wait_for(lambda: c.get("/health").json()["broker"] == "up", 10, what="broker up")
        yield c


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def total(found: list[tuple[str, dict[str, str], float]], metric: str, **labels: str) -> float:
    return sum(
        value
        for sample, have, value in found
        if sample == metric and all(have.get(k) == v for k, v in labels.items())
    )


def register(client: httpx.Client, content: bytes, dataset: str, name: str) -> int:
    response = client.post(
        "/api/data-sync/files",
        files={"file": (name, io.BytesIO(content), "application/octet-stream")},
        data={"dataset": dataset, "key_columns": "order_id"},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    file_id: int = response.json()["file_id"]
    return file_id


def sync(client: httpx.Client, file_id: int) -> str:
    response = client.post("/api/data-sync/sync-single-file", json={"file_id": file_id})
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


def test_metrics_count_the_tasks_of_every_queue_and_show_the_broker(
    client: httpx.Client, start_worker: StartWorker, multiproc_env: dict[str, str]
) -> None:
    # A prefork worker of two children writing to the directory the API reads.
    start_worker(concurrency=2, env=multiproc_env)
    session = f"m-{uuid.uuid4().hex[:8]}"
    saved = client.post(
        f"/api/conversations/{session}/messages", json={"role": "user", "content": "hi"}
    )
    assert saved.status_code == 202, saved.text
    wait_state(client, saved.json()["task_id"])
    dataset = f"ds-{uuid.uuid4().hex[:8]}"
    good = register(client, b"order_id,item\n1,apple\n2,pear\n3,fig\n", dataset, "good.csv")
    wait_state(client, sync(client, good))
    bad = register(client, b"1,apple\n2,pear\n", dataset, "noheader.csv")
    assert wait_final(client, sync(client, bad))["state"] == "FAILURE"
    flaky = submit(client, "system.flaky", transient_failures=1)
    assert wait_final(client, flaky["task_id"])["state"] == "SUCCESS"

    response = client.get("/metrics")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    for queue in QUEUES_USED:
        assert total(found, "syncq_tasks_submitted_total", queue=queue, executor="celery") > 0
        assert total(found, "syncq_tasks_finished_total", queue=queue, state="SUCCESS") > 0
        assert total(found, "syncq_task_duration_seconds_count", queue=queue) > 0
        assert total(found, "syncq_task_duration_seconds_bucket", queue=queue, le="+Inf") > 0
        assert total(found, "syncq_task_queue_wait_seconds_bucket", queue=queue, le="10.0") > 0
    sync_name = "data_sync.sync_file"
    assert total(found, "syncq_tasks_finished_total", name=sync_name, state="FAILURE") >= 1
    assert total(found, "syncq_task_retries_total", name="system.flaky") >= 1
    assert total(found, "syncq_sync_rows_total", result="inserted") >= 3
    assert total(found, "syncq_sync_rows_total", result="read") >= 3
    assert total(found, "syncq_recovery_sweeps_total") > 0  # the API's own sweep, every second
    assert total(found, "syncq_broker_up") == 1
    assert {labels["queue"] for name, labels, _ in found if name == "syncq_queue_depth"} >= {
        *QUEUES_USED,
        "scheduled",
    }
    assert total(found, "syncq_local_executor_capacity") >= 1


def test_metrics_answer_401_without_a_token_by_default(metrics_api: Api) -> None:
    with metrics_api.client(token=None) as anonymous:
        assert anonymous.get("/metrics").status_code == 401
    with metrics_api.client(token="wrong") as wrong:
        assert wrong.get("/metrics").status_code == 401


def test_the_loopback_setting_lets_a_local_scraper_in_without_a_token(loopback_api: Api) -> None:
    with loopback_api.client(token=None) as anonymous:
        response = anonymous.get("/metrics")
        assert response.status_code == 200, response.text
        assert "syncq_broker_up" in response.text
        # Through a proxy on this host (uvicorn trusts its X-Forwarded-For from 127.0.0.1)
        # the client is the one the proxy names: not loopback, so the token is wanted.
        proxied = anonymous.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
        assert proxied.status_code == 401
    with loopback_api.client() as token:
        assert token.get("/metrics").status_code == 200


def test_an_idle_worker_logs_the_broker_state_at_most_once(
    start_worker: StartWorker, start_beat: StartBeat, redis_up: RedisServer
) -> None:
    worker = start_worker()
    start_beat()  # fires the recovery sweep every second (SCHEDULE_RECOVERY_SECONDS)
    outcome = re.compile(r"task system\.recover \S+ SUCCESS in \d+\.\d+ s")

    def sweeps() -> int:
        return len(outcome.findall(worker.log_path.read_text(errors="replace")))

    wait_for(lambda: sweeps() >= 4, 45, interval=0.5, what=f"four sweeps\n{worker.tail()}")
    time.sleep(0.5)

    log = worker.log_path.read_text(errors="replace")
    assert len(re.findall(r"broker is (up|down)", log)) <= 1, worker.tail(60)
