"""Data writes are fenced by the claim (issue 13): a runner that lost its lease writes
nothing more, and one file has one running sync at a time.

In this process against a real database (SQLite file and PostgreSQL), through
``execute`` and the real sync body: the successor is a second ``execute`` of the same
task id whose lease setting makes the first runner's lease count as lapsed, which is what
a stalled or partitioned first runner looks like to it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.util import await_only

from backend.config import Settings
from backend.constants import State, TaskName
from backend.db.engine import get_session_factory
from backend.db.models import Record, SyncError, SyncFile
from backend.db.queries import data_sync as q
from backend.runtime import ledger
from backend.runtime.execution import Kind, Outcome, execute
from backend.runtime.registry import get_spec
from tests.helpers import register_in_process

ROWS = 6000
BAD_EVERY = 50  # every 50th row has no key: 120 rejected rows, each must be recorded once
GOOD = ROWS - ROWS // BAD_EVERY
# What exactly one sync of the test file leaves, however many runners tried.
ONE_SYNC = {
    "records": GOOD,
    "errors": ROWS // BAD_EVERY,
    "state": State.SUCCESS,
    "read": ROWS,
    "inserted": GOOD,
    "rejected": ROWS // BAD_EVERY,
}


def _csv() -> bytes:
    lines = ["sku,name,qty"]
    for i in range(ROWS):
        sku = "" if i % BAD_EVERY == 0 else f"S{i:06d}"
        lines.append(f"{sku},item {i},{i % 17}")
    return ("\n".join(lines) + "\n").encode()


async def _registered(settings: Settings, content: bytes) -> tuple[str, int]:
    dataset = f"fence_{uuid.uuid4().hex[:8]}"
    return dataset, await register_in_process(settings, content, dataset)


async def _accepted_sync(settings: Settings, file_id: int) -> str:
    task_id = str(uuid.uuid4())
    await ledger.adopt(
        get_session_factory(settings),
        task_id=task_id,
        name=TaskName.SYNC_FILE,
        queue=get_spec(TaskName.SYNC_FILE).queue,
        args={"file_id": file_id},
    )
    return task_id


async def _sync(settings: Settings, task_id: str, file_id: int, runner: str) -> Outcome:
    return await execute(
        get_spec(TaskName.SYNC_FILE),
        task_id,
        {"file_id": file_id},
        executor="celery",
        runner=runner,
        sessions=get_session_factory(settings),
        settings=settings,
    )


async def _rows_done(settings: Settings, task_id: str) -> int:
    async with get_session_factory(settings)() as session:
        checkpoint = await q.get_checkpoint(session, task_id=task_id)
    return checkpoint.rows_done if checkpoint is not None else 0


async def _dataset_state(settings: Settings, dataset: str, file_id: int) -> dict[str, Any]:
    async with get_session_factory(settings)() as session:
        records = await session.scalar(
            select(func.count()).select_from(Record).where(Record.dataset == dataset)
        )
        errors = await session.scalar(
            select(func.count()).select_from(SyncError).where(SyncError.file_id == file_id)
        )
        f = await session.get(SyncFile, file_id)
        assert f is not None
        return {
            "records": records,
            "errors": errors,
            "state": f.last_sync_state,
            "read": f.rows_read,
            "inserted": f.rows_inserted,
            "rejected": f.rows_rejected,
        }


async def test_a_runner_whose_lease_was_taken_over_writes_nothing_more(
    body_settings: Settings,
) -> None:
    """The first runner never heartbeats during the test (as if stalled), a successor
    takes the run over mid-sync, and the first runner's next batch is refused: it ends
    LOST, and the dataset, the rejected rows and the counters are exactly one sync's."""
    slow = body_settings.model_copy(update={"sync_batch_size": 100, "heartbeat_seconds": 600.0})
    dataset, file_id = await _registered(slow, _csv())
    task_id = await _accepted_sync(slow, file_id)

    first = asyncio.create_task(_sync(slow, task_id, file_id, runner="stalled"))
    while await _rows_done(slow, task_id) < 1000:
        assert not first.done(), await first
        await asyncio.sleep(0.01)
    # To the successor, any heartbeat is older than its lease: it takes the run over. (On
    # PostgreSQL its claim can lose to a batch that renewed the lease that very moment;
    # it is then told "not yours" and tries again, as the recovery sweep would.)
    successor = slow.model_copy(update={"lease_seconds": 0.0, "heartbeat_seconds": 5.0})
    second = await _sync(successor, task_id, file_id, runner="successor")
    while second.kind is Kind.SKIPPED and not first.done():
        second = await _sync(successor, task_id, file_id, runner="successor")
    lost = await first

    assert (lost.kind, second.kind) == (Kind.LOST, Kind.SUCCEEDED)
    assert await _dataset_state(slow, dataset, file_id) == ONE_SYNC
    run = await ledger.get(get_session_factory(slow), task_id)
    assert run is not None and run.state == State.SUCCESS and run.runner == "successor"


@dataclass
class Stall:
    """Holds the next checkpoint write inside its batch transaction until released, or
    runs ``instead`` there (in SQLAlchemy's greenlet, so it may ``await_only``)."""

    armed: bool = False
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    instead: Callable[[], None] | None = None


@contextmanager
def stall_at_next_checkpoint(settings: Settings) -> Iterator[Stall]:
    """What a partition does to a runner between its writes and its commit, made exact: the
    engine event runs inside SQLAlchemy's greenlet, so it can wait on the loop."""
    engine = ledger.engine_of(get_session_factory(settings)).sync_engine
    stall = Stall()

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if stall.armed and statement.lstrip().startswith("INSERT INTO sync_checkpoints"):
            stall.armed = False
            stall.reached.set()
            if stall.instead is not None:
                stall.instead()
            else:
                await_only(stall.release.wait())

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield stall
    finally:
        event.remove(engine, "before_cursor_execute", before)


async def _someone_waits_for_a_lock(sessions: Any) -> bool:
    async with sessions() as session:
        waiting = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


# PostgreSQL only: SQLite has one write lock, which the stalled batch holds, so there no
# successor can claim the run before that batch ends (the lock is the fence there).
@pytest.mark.parametrize("body_settings", ["postgresql"], indirect=True)
async def test_a_batch_in_flight_when_the_run_is_taken_over_is_rolled_back(
    body_settings: Settings,
) -> None:
    """The first runner has written a batch and stalls before its commit; the successor
    claims the run meanwhile and resumes from the last committed checkpoint. When the
    first runner wakes, its batch must not commit: the successor does that batch again,
    and a second copy would double its rejected rows and count its rows as unchanged."""
    assert body_settings.database_url.startswith("postgresql")
    slow = body_settings.model_copy(update={"sync_batch_size": 100, "heartbeat_seconds": 600.0})
    successor = slow.model_copy(update={"lease_seconds": 0.0, "heartbeat_seconds": 5.0})
    dataset, file_id = await _registered(slow, _csv())
    task_id = await _accepted_sync(slow, file_id)
    sessions = get_session_factory(slow)

    with stall_at_next_checkpoint(slow) as stall:
        first = asyncio.create_task(_sync(slow, task_id, file_id, runner="stalled"))
        while await _rows_done(slow, task_id) < 1000:
            assert not first.done(), await first
            await asyncio.sleep(0.01)
        stall.armed = True
        await asyncio.wait_for(stall.reached.wait(), 30)
        second = asyncio.create_task(_sync(successor, task_id, file_id, runner="successor"))
        # The successor has claimed the run, read the last committed checkpoint and now
        # waits for the stalled batch's rows: only then is the stalled batch's fate shown.
        while not await _someone_waits_for_a_lock(sessions):
            assert not second.done(), await second
            await asyncio.sleep(0.01)
        run = await ledger.get(sessions, task_id)
        assert run is not None and run.runner == "successor"
        stall.release.set()
        lost, taken = await first, await second

    assert (lost.kind, taken.kind) == (Kind.LOST, Kind.SUCCEEDED)
    assert await _dataset_state(slow, dataset, file_id) == ONE_SYNC


# PostgreSQL only: the successor claims the run from inside the first runner's batch
# transaction, which on SQLite holds the one write lock.
@pytest.mark.parametrize("body_settings", ["postgresql"], indirect=True)
async def test_a_runner_taken_over_whose_next_write_hits_a_dropped_connection_says_lease_lost(
    body_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A partitioned runner often learns of its end from a dropped connection, not from the
    fence: the error is transient, its retry is refused (the row is the successor's), and
    the run ends LOST with the log line an operator looks for (a CI run's partition test
    waited a minute for it)."""
    slow = body_settings.model_copy(update={"sync_batch_size": 100, "heartbeat_seconds": 600.0})
    _, file_id = await _registered(slow, _csv())
    task_id = await _accepted_sync(slow, file_id)
    sessions = get_session_factory(slow)

    def taken_over_then_dropped() -> None:
        claim = {"task_id": task_id, "runner": "successor", "executor": "celery"}
        assert await_only(ledger.claim(sessions, token="successor", lease=timedelta(0), **claim))
        raise ConnectionResetError("connection reset by peer")

    with stall_at_next_checkpoint(slow) as stall:
        stall.instead = taken_over_then_dropped
        first = asyncio.create_task(_sync(slow, task_id, file_id, runner="partitioned"))
        while await _rows_done(slow, task_id) < 1000:
            assert not first.done(), await first
            await asyncio.sleep(0.01)
        stall.armed = True
        with caplog.at_level("WARNING", logger="backend.runtime.execution"):
            lost = await asyncio.wait_for(first, 60)

    assert stall.reached.is_set(), "the dropped connection was never hit"
    assert lost.kind is Kind.LOST
    assert any("lease lost" in r.getMessage() for r in caplog.records)
    run = await ledger.get(sessions, task_id)
    assert run is not None and run.runner == "successor"


async def test_the_fence_refuses_a_transaction_of_a_runner_that_lost_its_claim(
    body_settings: Settings,
) -> None:
    sessions = get_session_factory(body_settings)
    _, file_id = await _registered(body_settings, b"sku,qty\nA,1\n")
    task_id = await _accepted_sync(body_settings, file_id)
    claim = {"task_id": task_id, "runner": "r", "executor": "celery"}
    assert await ledger.claim(sessions, token="old", lease=timedelta(seconds=30), **claim)
    assert await ledger.claim(sessions, token="new", lease=timedelta(0), **claim)

    async with sessions() as session, session.begin():
        assert not await ledger.hold_in(session, task_id=task_id, token="old")
        assert await ledger.hold_in(session, task_id=task_id, token="new")


async def test_a_second_sync_of_a_file_being_synced_fails_and_touches_nothing(
    body_settings: Settings,
) -> None:
    """One sync per file: while a live run holds the file, another sync of it ends
    FAILURE with the holder's id, and neither the holder's rejected rows nor the file's
    state change. Once the holder is final, the file is free again."""
    sessions = get_session_factory(body_settings)
    dataset, file_id = await _registered(body_settings, b"sku,qty\nA,1\n,2\nB,3\n")
    holder = await _accepted_sync(body_settings, file_id)
    assert await ledger.claim(
        sessions,
        task_id=holder,
        token="holder",
        runner="elsewhere",
        executor="celery",
        lease=timedelta(seconds=30),
    )
    async with sessions() as session, session.begin():
        assert await q.take_file(session, file_id=file_id, task_id=holder) is None
        await q.add_errors(session, file_id=file_id, task_id=holder, errors=[(3, "no key")])

    intruder = await _accepted_sync(body_settings, file_id)
    outcome = await _sync(body_settings, intruder, file_id, runner="intruder")

    assert outcome.kind is Kind.FAILED and outcome.error is not None
    assert outcome.error["type"] == "FileBusy" and holder in outcome.error["message"]
    state = await _dataset_state(body_settings, dataset, file_id)
    assert (state["state"], state["errors"], state["records"]) == (State.STARTED, 1, 0)
    async with sessions() as session:
        f = await session.get(SyncFile, file_id)
        assert f is not None and f.last_sync_task_id == holder

    ended = await ledger.finish(
        sessions,
        task_id=holder,
        token="holder",
        ending=ledger.Ending(State.FAILURE, False, error={"type": "X", "message": "gone"}),
    )
    assert ended.done
    later = await _accepted_sync(body_settings, file_id)
    assert (await _sync(body_settings, later, file_id, runner="later")).kind is Kind.SUCCEEDED
    assert await _dataset_state(body_settings, dataset, file_id) == {
        "records": 2,
        "errors": 1,
        "state": State.SUCCESS,
        "read": 3,
        "inserted": 2,
        "rejected": 1,
    }
