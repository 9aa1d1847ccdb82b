"""Live events (SSE), notifications and the system views, with real workers and Redis."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from celery import Celery

from backend.config import Settings
from backend.constants import EVENTS_STREAM
from backend.runtime import hub as hub_module
from backend.runtime.broker import Broker
from backend.runtime.hub import READ_BLOCK_MS, EventHub
from tests.conftest import OpenEvents, StartWorker
from tests.helpers import submit, wait_state
from tests.support import RETIRING, TOKEN, RedisServer, wait_for
from tests.test_data_sync import csv_bytes, new_dataset, register, sync


def test_an_sse_client_sees_a_sync_move_through_progress_to_success(
    client: httpx.Client, start_worker: StartWorker, open_events: OpenEvents
) -> None:
    start_worker(env={"SYNC_BATCH_SIZE": "500"})
    f = register(client, csv_bytes(3_000), new_dataset())
    stream = open_events()

    task_id = sync(client, f["file_id"])["task_id"]

    states = stream.wait_for_state(task_id, "SUCCESS")
    assert stream.status_code == 200
    assert states[0] == "PENDING" and states[-1] == "SUCCESS"
    assert "STARTED" in states and states.count("PROGRESS") >= 2
    progress = [e["progress"] for e in stream.of_task(task_id) if e["state"] == "PROGRESS"]
    assert progress[-1]["current"] == 3_000 and progress[-1]["total"] == 3_000
    event = stream.of_task(task_id)[-1]
    assert event["name"] == "data_sync.sync_file" and event["executor"] == "celery"


def test_a_client_reconnecting_with_last_event_id_gets_what_it_missed(
    client: httpx.Client, start_worker: StartWorker, open_events: OpenEvents
) -> None:
    start_worker()
    first = open_events()
    early = submit(client, "system.noop")["task_id"]
    first.wait_for_state(early, "SUCCESS")
    resume_from = [e for e in first.events if e["data"].get("task_id") == early][-1]["id"]

    missed = submit(client, "system.sleep", seconds=0.2, steps=2)["task_id"]
    wait_state(client, missed, "SUCCESS")
    again = open_events(last_event_id=resume_from)

    assert again.wait_for_state(missed, "SUCCESS") == [
        "PENDING", "STARTED", "PROGRESS", "PROGRESS", "SUCCESS"
    ]  # fmt: skip
    assert again.states(early) == []  # nothing from before Last-Event-ID


def test_a_client_reconnecting_after_nobody_listened_gets_what_it_missed(
    client: httpx.Client, start_worker: StartWorker, open_events: OpenEvents
) -> None:
    """Every listener left, events went on, a client comes back with its Last-Event-ID:
    what happened in between is replayed, whatever the hub did while nobody listened."""
    start_worker()
    first = open_events()
    early = submit(client, "system.noop")["task_id"]
    first.wait_for_state(early, "SUCCESS")
    resume_from = [e for e in first.events if e["data"].get("task_id") == early][-1]["id"]
    first.close()
    time.sleep(READ_BLOCK_MS / 1000 + 1.5)  # past a whole read of the hub

    missed = submit(client, "system.sleep", seconds=0.2, steps=2)["task_id"]
    wait_state(client, missed, "SUCCESS")
    again = open_events(last_event_id=resume_from)

    assert again.wait_for_state(missed, "SUCCESS") == [
        "PENDING", "STARTED", "PROGRESS", "PROGRESS", "SUCCESS"
    ]  # fmt: skip


def test_events_can_be_filtered_to_one_task(
    client: httpx.Client, start_worker: StartWorker, open_events: OpenEvents
) -> None:
    start_worker()
    wanted = submit(client, "system.sleep", seconds=1, steps=2)["task_id"]
    stream = open_events(task_id=wanted)
    submit(client, "system.noop")

    stream.wait_for_state(wanted, "SUCCESS")
    assert {e["data"]["task_id"] for e in stream.events if e["event"] == "task"} == {wanted}


def test_tasks_that_end_leave_notifications(
    client: httpx.Client, start_worker: StartWorker, open_events: OpenEvents
) -> None:
    start_worker()
    stream = open_events()
    ok = submit(client, "system.noop")["task_id"]
    cancelled = submit(client, "system.sleep", seconds=30, steps=30)["task_id"]
    wait_state(client, cancelled, "PROGRESS")
    assert client.delete(f"/api/tasks/{cancelled}").status_code == 202
    failed = submit(client, "system.flaky", transient_failures=99)["task_id"]
    wait_state(client, failed, "FAILURE")

    def notifications() -> dict[str, dict[str, str]]:
        response = client.get("/api/notifications", params={"limit": 100})
        assert response.status_code == 200, response.text
        return {n["task_id"]: n for n in response.json()}

    found = wait_for(
        lambda: (n := notifications()).keys() >= {ok, cancelled, failed} and n,
        20,
        what="three notifications",
    )
    assert found[ok]["state"] == "SUCCESS" and found[ok]["level"] == "info"
    assert found[cancelled]["state"] == "REVOKED" and found[cancelled]["level"] == "warning"
    assert found[failed]["state"] == "FAILURE" and found[failed]["level"] == "error"
    assert "failed" in found[failed]["message"]
    wait_for(
        lambda: (
            {e["data"]["task_id"] for e in stream.events if e["event"] == "notification"}
            >= {ok, cancelled, failed}
        ),
        10,
        what="notification events",
    )


@pytest.mark.slow
def test_with_redis_down_the_local_executor_feeds_events_and_notifications(
    client: httpx.Client, redis_up: RedisServer, open_events: OpenEvents
) -> None:
    stream = open_events()
    redis_up.kill()
    wait_for(lambda: client.get("/health").json()["broker"] == "down", 5, what="broker down")

    accepted = submit(client, "system.sleep", seconds=0.2, steps=2)
    task_id = accepted["task_id"]

    assert stream.wait_for_state(task_id, "SUCCESS") == [
        "PENDING", "STARTED", "PROGRESS", "PROGRESS", "SUCCESS"
    ]  # fmt: skip
    assert stream.of_task(task_id)[-1]["executor"] == "local"
    notes = wait_for(
        lambda: [
            n
            for n in client.get("/api/notifications").json()
            if isinstance(n, dict) and n.get("task_id") == task_id
        ],
        15,
        what="the local notification",
    )
    assert notes[0]["state"] == "SUCCESS"


def test_system_views_show_the_worker_and_the_queues(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    worker = start_worker(concurrency=2)

    body = wait_for(
        lambda: (
            (b := client.get("/api/system/workers").json())
            # every part of the broadcast answered (a busy worker may miss one reply's
            # timeout, and the view then shows what it has: the next call completes it)
            and any(
                w["name"] == worker.node and w["ping"] and w["pool"] and w["queues"]
                for w in b["workers"]
            )
            and b
        ),
        30,
        what="the worker in /api/system/workers",
    )
    ours = next(w for w in body["workers"] if w["name"] == worker.node)
    assert ours["pool"] == "prefork" and ours["concurrency"] == 2
    assert set(ours["queues"]) == {"database", "data_sync", "scheduled", "default"}

    queues = client.get("/api/system/queues").json()
    assert queues["broker"] == "up"
    assert set(queues["queues"]) == {"database", "data_sync", "scheduled", "default"}


def test_system_views_answer_fast_when_no_worker_does(
    client: httpx.Client, redis_up: RedisServer
) -> None:
    RETIRING.wait()  # the workers of earlier tests have ended
    worker_free_queue_before = client.get("/api/system/queues").json()["queues"]["default"]
    submit(client, "system.noop")
    submit(client, "system.noop")

    started = time.monotonic()
    response = client.get("/api/system/workers")
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert not [w for w in response.json()["workers"] if w["ping"]]
    assert elapsed < 5  # inspect's timeout is 1 s; generous for a busy 2-core machine
    assert client.get("/api/system/queues").json()["queues"]["default"] >= (
        worker_free_queue_before + 2
    )


def test_the_throughput_view_counts_every_finish_in_the_ledger_by_minute_and_state(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    """The dashboard's chart: what the ledger says finished, whichever executor ran it,
    not what one page of the task list shows."""
    start_worker()
    # Only minutes from now on: the 5-minute window slides while the test runs, and what
    # earlier tests finished in its oldest minute would drop out of a plain total.
    since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")

    def totals() -> dict[str, int]:
        found: dict[str, int] = {}
        body = client.get("/api/system/throughput", params={"minutes": 5}).json()
        assert body["minutes"] == 5
        for bucket in body["finished"]:
            assert len(bucket["minute"]) == 16  # "YYYY-MM-DD HH:MM", UTC
            if bucket["minute"] >= since:
                found[bucket["state"]] = found.get(bucket["state"], 0) + bucket["count"]
        return found

    before = totals()
    done = [submit(client, "system.noop")["task_id"] for _ in range(12)]
    for task_id in done:
        wait_state(client, task_id, "SUCCESS")
    sleeper = submit(client, "system.sleep", seconds=30)["task_id"]
    assert client.delete(f"/api/tasks/{sleeper}").status_code == 202

    # Counted up to 5 s late (one query per 5 s, however many dashboards ask).
    after = wait_for(
        lambda: (
            (t := totals()).get("SUCCESS", 0) >= before.get("SUCCESS", 0) + 12
            and t.get("REVOKED", 0) >= before.get("REVOKED", 0) + 1
            and t
        ),
        timeout=15,
    )
    assert set(after) <= {"SUCCESS", "FAILURE", "REVOKED"}
    assert client.get("/api/system/throughput", params={"minutes": 61}).status_code == 422


async def test_the_hub_reads_the_stream_only_while_someone_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody listening, the API leaves the stream alone (reading every task's events for
    nobody cost it 7.7 % of its time). The first listener after that misses nothing: a
    replay reads what the hub never saw from the stream, and live events follow."""
    monkeypatch.setattr(hub_module, "IDLE_READ_SECONDS", 0.5)
    server = RedisServer(tmp_path)
    server.start()
    try:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            redis_url=server.url,
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}",
            api_tokens=[TOKEN],
        )
        broker = Broker(settings, Celery())
        assert await broker.probe()
        hub = EventHub(broker)
        reader = asyncio.ensure_future(hub.follow())
        redis_client = server.client()

        def reads() -> int:
            return int(redis_client.info("commandstats").get("cmdstat_xread", {}).get("calls", 0))

        def append(task_id: str) -> str:
            data = json.dumps({"task_id": task_id, "state": "SUCCESS"})
            return redis_client.xadd(EVENTS_STREAM, {"kind": "task", "data": data}).decode()

        before = append("before")
        unseen = append("while-nobody-listened")
        await asyncio.sleep(1.5)
        assert reads() == 0

        await hub.wake()
        async with hub.listen() as queue:
            replayed = await hub.replay(before)
            live = append("live")
            arrived = await asyncio.wait_for(queue.get(), 5)
        assert [e.data["task_id"] for e in replayed] == ["while-nobody-listened"]
        assert [e.id for e in replayed] == [unseen]
        assert arrived is not None and (arrived.id, arrived.data["task_id"]) == (live, "live")

        await asyncio.sleep(0.5 + READ_BLOCK_MS / 1000 + 0.5)  # the idle minute, shortened
        idle = reads()
        await asyncio.sleep(1.5)
        assert reads() == idle

        # The events route wakes the reader before its response starts; what the client
        # causes right after (here: before its listener is even registered) still reaches it.
        await hub.wake()
        first = append("first-after-idle")
        async with hub.listen() as queue:
            arrived = await asyncio.wait_for(queue.get(), 5)
        assert arrived is not None and arrived.id == first

        reader.cancel()
        await hub.close()
        await broker.close()
    finally:
        server.kill()
