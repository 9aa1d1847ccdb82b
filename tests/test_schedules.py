"""Scheduled work on RedBeat: real beat processes firing into real workers."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, insert, select

from backend.db.engine import make_unpooled_engine
from backend.db.models import ConversationMessage, Dataset, SyncError, SyncFile, TaskRun
from tests.conftest import StartBeat, StartWorker
from tests.helpers import wait_state
from tests.support import wait_for

pytestmark = pytest.mark.slow


def recover_runs(client: httpx.Client, since: datetime) -> list[dict[str, Any]]:
    runs = client.get("/api/tasks", params={"name": "system.recover", "limit": 500}).json()
    return [r for r in runs if datetime.fromisoformat(r["submitted_at"]) >= since]


def test_each_firing_runs_once_with_two_beats_and_a_standby_takes_over(
    client: httpx.Client, start_worker: StartWorker, start_beat: StartBeat
) -> None:
    start_worker()
    beats = [start_beat(), start_beat()]
    wait_for(lambda: recover_runs(client, datetime.now(UTC) - timedelta(seconds=2)), 30,
             what="the first firing")  # fmt: skip

    window_start = datetime.now(UTC)
    time.sleep(6)
    fired = recover_runs(client, window_start)
    # One firing a second by the lock holder; two unlocked beats would give about twelve.
    assert 3 <= len(fired) <= 8, [r["submitted_at"] for r in fired]
    times = sorted(datetime.fromisoformat(r["submitted_at"]) for r in fired)
    assert all((b - a).total_seconds() > 0.5 for a, b in itertools.pairwise(times))
    for r in fired:
        assert wait_state(client, r["task_id"], "SUCCESS")["queue"] == "scheduled"

    leader = next(b for b in beats if "acquired lock" in b.tail(200).lower())
    leader.kill()
    killed_at = datetime.now(UTC)
    wait_for(
        lambda: recover_runs(client, killed_at + timedelta(seconds=1)),
        4 + 10,  # the lock timeout, plus a few beat ticks
        what="the standby beat to take over",
    )


def test_the_schedule_listing_shows_last_and_next_runs_that_move(
    client: httpx.Client, start_worker: StartWorker, start_beat: StartBeat
) -> None:
    start_worker()
    start_beat()

    def entry() -> dict[str, Any]:
        listed = {s["name"]: s for s in client.get("/api/schedules").json()}
        assert set(listed) == {
            "recovery-sweep", "purge-conversations", "purge-task-runs", "sweep-uploads",
            "purge-exports", "inbox-scan",
        }  # fmt: skip
        found: dict[str, Any] = listed["recovery-sweep"]
        return found

    first = wait_for(lambda: entry()["last_run"] and entry(), 30, what="a first run")
    assert first["task"] == "system.recover" and first["enabled"] is True
    assert first["every_seconds"] == 1
    later = wait_for(
        lambda: (e := entry())["last_run"] > first["last_run"] and e, 15, what="a later run"
    )
    assert later["next_run"] > first["next_run"]


def test_running_an_unknown_schedule_is_404(client: httpx.Client) -> None:
    assert client.post("/api/schedules/no-such-entry/run").status_code == 404


def test_each_purge_deletes_exactly_what_is_past_retention(
    client: httpx.Client, start_worker: StartWorker, stack_env: dict[str, str]
) -> None:
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=400), now - timedelta(hours=1)
    tag = uuid.uuid4().hex[:8]

    async def seed() -> None:
        engine = make_unpooled_engine(stack_env["DATABASE_URL"])
        async with engine.begin() as conn:
            await conn.execute(insert(ConversationMessage), [
                {"message_key": f"{tag}-{i}", "session_id": f"purge-{tag}", "role": "user",
                 "content": "x", "created_at": when}
                for i, when in enumerate([old, old, recent])
            ])  # fmt: skip
            await conn.execute(insert(TaskRun), [
                {"id": f"{tag}-{i}", "name": "system.noop", "queue": "default", "state": state,
                 "priority": 5, "args": {}, "executor": "celery", "attempts": 1,
                 "recoveries": 0, "cancel_requested": False, "submitted_at": when,
                 "dispatched_at": when, "finished_at": when if state != "STARTED" else None}
                for i, (state, when) in enumerate(
                    [("SUCCESS", old), ("FAILURE", old), ("SUCCESS", recent), ("STARTED", old)]
                )
            ])  # fmt: skip
            await conn.execute(insert(Dataset).values(name=tag, key_columns=["k"], created_at=now))
            file_id = (
                await conn.execute(
                    insert(SyncFile).values(
                        original_name="f.csv", stored_path="/nonexistent", format="csv", size=1,
                        checksum=tag, dataset=tag, registered_at=now, rows_read=0,
                        rows_inserted=0, rows_updated=0, rows_unchanged=0, rows_rejected=0,
                    ).returning(SyncFile.id)
                )
            ).scalar_one()  # fmt: skip
            await conn.execute(insert(SyncError), [
                {"file_id": file_id, "task_id": "t", "row_number": n, "reason": "r",
                 "created_at": when}
                for n, when in enumerate([old, recent])
            ])  # fmt: skip
        await engine.dispose()

    async def remaining() -> tuple[int, list[str], int]:
        engine = make_unpooled_engine(stack_env["DATABASE_URL"])
        async with engine.connect() as conn:
            messages = (await conn.execute(
                select(func.count()).where(ConversationMessage.session_id == f"purge-{tag}")
            )).scalar_one()  # fmt: skip
            runs = (await conn.execute(
                select(TaskRun.id).where(TaskRun.id.like(f"{tag}-%")).order_by(TaskRun.id)
            )).scalars().all()  # fmt: skip
            errors = (await conn.execute(
                select(func.count()).select_from(SyncError).join(
                    SyncFile, SyncFile.id == SyncError.file_id
                ).where(SyncFile.dataset == tag)
            )).scalar_one()  # fmt: skip
        await engine.dispose()
        return messages, list(runs), errors

    asyncio.run(seed())
    start_worker()
    for name in ("purge-conversations", "purge-task-runs"):
        response = client.post(f"/api/schedules/{name}/run")
        assert response.status_code == 202
        assert response.json()["queue"] == "scheduled"
        wait_state(client, response.json()["task_id"], "SUCCESS")

    assert asyncio.run(remaining()) == (1, [f"{tag}-2", f"{tag}-3"], 1)
