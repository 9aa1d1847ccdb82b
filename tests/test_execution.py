"""How one delivery is run and recorded (backend/runtime/execution.py), in this process
against a real database: the outcome, the ledger row, the notification, and the commits.

Invariant 8: a short task costs one commit for claim + body + finish + notification.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import event, func, select

from backend.config import Settings
from backend.constants import State, TaskName
from backend.db.engine import get_autocommit_engine, get_session_factory
from backend.db.models import ConversationMessage, Notification
from backend.runtime import ledger
from backend.runtime.execution import ROW_WAITS, Kind, execute
from backend.runtime.registry import get_spec

NOW = "2026-11-24T10:00:00+00:00"


async def _run(
    settings: Settings, name: str, args: dict[str, Any], task_id: str, **options: Any
) -> Kind:
    """One delivery run here; ``options`` go to ``execute`` (``atomic_engine``, ...)."""
    outcome = await execute(
        get_spec(name),
        task_id,
        args,
        executor="celery",
        runner="test",
        sessions=get_session_factory(settings),
        settings=settings,
        **options,
    )
    return outcome.kind


async def _accepted(settings: Settings, name: str, args: dict[str, Any]) -> str:
    task_id = str(uuid.uuid4())
    spec = get_spec(name)
    sessions = get_session_factory(settings)
    await ledger.adopt(sessions, task_id=task_id, name=name, queue=spec.queue, args=args)
    return task_id


async def _notifications(settings: Settings, task_id: str) -> list[str]:
    async with get_session_factory(settings)() as session:
        rows = await session.scalars(select(Notification).where(Notification.task_id == task_id))
        return [n.state for n in rows]


@contextmanager
def counting_writes(settings: Settings) -> Iterator[dict[str, int]]:
    """Commits on the session engine, plus statements on the autocommit engine (each of
    those commits by itself)."""
    counts = {"commits": 0}
    sessions_engine = ledger.engine_of(get_session_factory(settings)).sync_engine
    autocommit = get_autocommit_engine(settings.database_url).sync_engine

    def on_commit(*_: Any) -> None:
        counts["commits"] += 1

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not statement.lstrip().upper().startswith("SELECT"):
            counts["commits"] += 1

    event.listen(sessions_engine, "commit", on_commit)
    event.listen(autocommit, "before_cursor_execute", on_execute)
    try:
        yield counts
    finally:
        event.remove(sessions_engine, "commit", on_commit)
        event.remove(autocommit, "before_cursor_execute", on_execute)


async def test_a_conversation_save_is_claimed_run_finished_and_notified_in_one_commit(
    body_settings: Settings,
) -> None:
    args = {"session_id": "one-commit", "role": "user", "content": "hi", "received_at": NOW}
    task_id = await _accepted(body_settings, TaskName.SAVE_CONVERSATION, args)

    with counting_writes(body_settings) as writes:
        kind = await _run(body_settings, TaskName.SAVE_CONVERSATION, args, task_id)

    assert kind is Kind.SUCCEEDED
    assert writes["commits"] == 1
    run = await ledger.get(get_session_factory(body_settings), task_id)
    assert run is not None
    assert (run.state, run.attempts, run.claim_token) == (State.SUCCESS, 1, None)
    assert run.result["content"] == "hi"
    assert await _notifications(body_settings, task_id) == ["SUCCESS"]


async def test_on_postgresql_the_finish_and_its_notification_are_one_statement(
    body_settings: Settings,
) -> None:
    """A short task on PostgreSQL is BEGIN, claim, the body's write, finish with its
    notification, COMMIT: the notification row is the one the separate INSERT wrote."""
    from sqlalchemy.engine import make_url

    if make_url(body_settings.database_url).get_backend_name() != "postgresql":
        pytest.skip("SQLite runs these statements on its driver, one call each")
    args = {"session_id": "one-trip", "role": "user", "content": "hi", "received_at": NOW}
    task_id = await _accepted(body_settings, TaskName.SAVE_CONVERSATION, args)
    statements: list[str] = []
    engine = ledger.engine_of(get_session_factory(body_settings)).sync_engine

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement.split()[0].upper())

    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        kind = await _run(body_settings, TaskName.SAVE_CONVERSATION, args, task_id)
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)

    assert kind is Kind.SUCCEEDED
    assert statements == ["UPDATE", "INSERT", "WITH"]  # claim, save, finish + notification
    async with get_session_factory(body_settings)() as session:
        notice = (
            await session.scalars(select(Notification).where(Notification.task_id == task_id))
        ).one()
    assert (notice.task_name, notice.state, notice.level, notice.error) == (
        TaskName.SAVE_CONVERSATION.value, "SUCCESS", "info", None,
    )  # fmt: skip
    assert notice.message == f"{TaskName.SAVE_CONVERSATION.value} succeeded"


async def test_a_redelivery_of_a_finished_atomic_task_is_skipped_and_writes_nothing(
    body_settings: Settings,
) -> None:
    args = {"session_id": "twice", "role": "user", "content": "hi", "received_at": NOW}
    task_id = await _accepted(body_settings, TaskName.SAVE_CONVERSATION, args)
    assert await _run(body_settings, TaskName.SAVE_CONVERSATION, args, task_id) is Kind.SUCCEEDED

    with counting_writes(body_settings) as writes:
        kind = await _run(body_settings, TaskName.SAVE_CONVERSATION, args, task_id)

    assert kind is Kind.SKIPPED
    assert writes["commits"] == 0


async def test_a_read_leaves_no_notification(body_settings: Settings) -> None:
    args = {"session_id": "nobody"}
    task_id = await _accepted(body_settings, TaskName.GET_CONVERSATION_HISTORY, args)

    kind = await _run(body_settings, TaskName.GET_CONVERSATION_HISTORY, args, task_id)

    assert kind is Kind.SUCCEEDED
    assert await _notifications(body_settings, task_id) == []


async def test_an_atomic_body_that_fails_leaves_only_its_failure(
    body_settings: Settings,
) -> None:
    """The rolled-back attempt leaves nothing: one attempt recorded, FAILURE with the
    body's reason, a failure notification, and no registered file."""
    args = {
        "stored_path": str(body_settings.data_dir / "uploads" / "missing.csv"),
        "original_name": "missing.csv",
        "size": 1,
        "checksum": uuid.uuid4().hex,
        "dataset": "never",
        "key_columns": ["id"],
    }
    task_id = await _accepted(body_settings, TaskName.REGISTER_FILE, args)

    kind = await _run(body_settings, TaskName.REGISTER_FILE, args, task_id)

    assert kind is Kind.FAILED
    run = await ledger.get(get_session_factory(body_settings), task_id)
    assert run is not None
    assert (run.state, run.attempts) == (State.FAILURE, 1)
    assert run.error is not None
    assert "missing" in run.error["message"]
    assert await _notifications(body_settings, task_id) == ["FAILURE"]


async def test_an_atomic_body_that_fails_on_its_own_terms_runs_once(
    body_settings: Settings,
) -> None:
    calls: list[dict[str, Any]] = []

    async def refuses(ctx: Any, **args: Any) -> None:
        calls.append(args)
        raise ValueError("no such thing")

    spec = replace(get_spec(TaskName.SAVE_CONVERSATION), body=refuses)
    task_id = await _accepted(body_settings, spec.name, {"x": 1})

    outcome = await execute(
        spec,
        task_id,
        {"x": 1},
        executor="celery",
        runner="test",
        sessions=get_session_factory(body_settings),
        settings=body_settings,
    )

    assert outcome.kind is Kind.FAILED
    assert calls == [{"x": 1}]
    run = await ledger.get(get_session_factory(body_settings), task_id)
    assert run is not None
    assert (run.state, run.attempts, run.error["message"]) == (State.FAILURE, 1, "no such thing")


async def test_a_redelivered_or_recovered_atomic_task_commits_its_claim_before_its_body(
    body_settings: Settings,
) -> None:
    """A try that killed its process rolled its claim back and left no count; the broker's
    redelivery and the sweep's re-dispatch therefore run leased, so the attempt counts and
    MAX_ATTEMPTS can stop a body that kills every worker it runs on."""
    sessions = get_session_factory(body_settings)
    args = {"session_id": "again", "role": "user", "content": "hi", "received_at": NOW}
    redelivered = await _accepted(body_settings, TaskName.SAVE_CONVERSATION, args)
    recovered = await _accepted(body_settings, TaskName.SAVE_CONVERSATION, args)
    orphan = await ledger.get(sessions, recovered)
    assert orphan is not None
    assert await ledger.take_orphan(sessions, _as_orphan(orphan))  # what the sweep does

    with counting_writes(body_settings) as writes:
        first = await execute(
            get_spec(TaskName.SAVE_CONVERSATION),
            redelivered,
            args,
            executor="celery",
            runner="test",
            sessions=sessions,
            settings=body_settings,
            redelivered=True,
        )
    redelivered_commits = writes["commits"]
    with counting_writes(body_settings) as writes:
        second = await _run(body_settings, TaskName.SAVE_CONVERSATION, args, recovered)

    assert (first.kind, second) == (Kind.SUCCEEDED, Kind.SUCCEEDED)
    assert redelivered_commits >= 3 and writes["commits"] >= 3  # claim, body, finish
    for task_id in (redelivered, recovered):
        run = await ledger.get(sessions, task_id)
        assert run is not None
        assert (run.state, run.attempts) == (State.SUCCESS, 1)


def _as_orphan(run: Any) -> ledger.Orphan:
    return ledger.Orphan(
        id=run.id, name=run.name, queue=run.queue, args=run.args, priority=run.priority,
        state=run.state, executor=run.executor, attempts=run.attempts,
        dispatched_at=run.dispatched_at, heartbeat_at=run.heartbeat_at,
    )  # fmt: skip


async def test_a_cancelled_task_is_never_run(body_settings: Settings) -> None:
    args = {"session_id": "cancelled", "role": "user", "content": "x", "received_at": NOW}
    task_id = await _accepted(body_settings, TaskName.SAVE_CONVERSATION, args)
    sessions = get_session_factory(body_settings)
    ended = await ledger.request_cancel(sessions, task_id, notify=True)

    kind = await _run(body_settings, TaskName.SAVE_CONVERSATION, args, task_id)

    assert ended.done
    assert kind is Kind.SKIPPED
    run = await ledger.get(sessions, task_id)
    assert run is not None
    assert (run.state, run.attempts) == (State.REVOKED, 0)
    assert await _notifications(body_settings, task_id) == ["REVOKED"]


async def test_submissions_are_recorded_whether_or_not_another_process_holds_the_lock(
    body_settings: Settings,
) -> None:
    """The ledger's group commit on SQLite writes on the loop when the write lock is free
    and waits for it on aiosqlite's thread when another process holds it: rows land either
    way, and the loop keeps running while it waits (the API keeps serving)."""
    import asyncio
    import sqlite3
    import threading
    import time

    from sqlalchemy.engine import make_url

    sessions = get_session_factory(body_settings)
    inserter = ledger.Inserter(sessions)

    free = str(uuid.uuid4())
    await inserter.add(_pending_run(free))

    held = str(uuid.uuid4())
    ticks = 0
    if make_url(body_settings.database_url).get_backend_name() == "sqlite":
        path = str(make_url(body_settings.database_url).database)
        holder = sqlite3.connect(path, timeout=5, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        threading.Timer(0.4, holder.rollback).start()

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        started = time.monotonic()
        try:
            await inserter.add(_pending_run(held))
        finally:
            ticker.cancel()
            holder.close()
            await inserter.close()  # the connection its lock-free writes kept
        waited = time.monotonic() - started
        assert waited >= 0.3  # it did wait for the lock...
        assert ticks >= 10  # ...and the loop ran meanwhile
    else:
        try:
            await inserter.add(_pending_run(held))
        finally:
            await inserter.close()  # the connection its asyncpg writes kept

    for task_id in (free, held):
        recorded = await ledger.get(sessions, task_id)
        assert recorded is not None and recorded.state == State.PENDING


def _pending_run(task_id: str) -> dict[str, Any]:
    """A ledger row as the API records a no-op submission."""
    return {
        "id": task_id,
        "name": TaskName.NOOP.value,
        "queue": "default",
        "state": "PENDING",
        "priority": 5,
        "args": {},
        "executor": "celery",
        "attempts": 0,
        "recoveries": 0,
        "cancel_requested": False,
        "idempotency_key": None,
        "submitted_at": ledger.utcnow(),
        "dispatched_at": ledger.utcnow(),
    }


async def test_a_submission_is_recorded_after_postgresql_dropped_the_pooled_connections(
    body_settings: Settings,
) -> None:
    """The Inserter's PostgreSQL connections skip the pre-ping round trip; a connection the
    server dropped (a restart, an admin's terminate) costs a second try, not the request."""
    from sqlalchemy.engine import make_url

    from tests.conftest import _postgres

    url = make_url(body_settings.database_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("PostgreSQL's pooled connections; SQLite has none to drop")
    sessions = get_session_factory(body_settings)
    inserter = ledger.Inserter(sessions)
    before, after = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        await inserter.add(_pending_run(before))  # the pool now holds a connection

        _postgres(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{url.database}' AND pid <> pg_backend_pid()"
        )
        await inserter.add(_pending_run(after))
    finally:
        await inserter.close()

    for task_id in (before, after):
        recorded = await ledger.get(sessions, task_id)
        assert recorded is not None and recorded.state == State.PENDING


async def test_an_atomic_run_on_a_connection_postgresql_dropped_runs_again_and_finishes(
    body_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker's atomic runs skip the pre-ping on PostgreSQL: a pooled connection the
    server dropped fails the run's first statement, and the run is done again (leased) on
    a new connection. The message is saved once and the task ends SUCCESS."""
    from sqlalchemy.engine import make_url

    from backend.db.engine import get_atomic_engine
    from tests.conftest import _postgres

    url = make_url(body_settings.database_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("PostgreSQL's pooled connections; SQLite has none to drop")
    atomic = get_atomic_engine(body_settings.database_url)
    sessions = get_session_factory(body_settings)

    async def run(task_id: str, args: dict[str, Any]) -> Kind:
        return await _run(
            body_settings, TaskName.SAVE_CONVERSATION, args, task_id, atomic_engine=atomic
        )

    warm = {"session_id": "dropped", "role": "user", "content": "warm", "received_at": NOW}
    first = await _accepted(body_settings, TaskName.SAVE_CONVERSATION, warm)
    assert await run(first, warm) is Kind.SUCCEEDED  # the atomic pool now holds a connection

    _postgres(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{url.database}' AND pid <> pg_backend_pid()"
    )
    args = {"session_id": "dropped", "role": "user", "content": "after", "received_at": NOW}
    task_id = await _accepted(body_settings, TaskName.SAVE_CONVERSATION, args)
    with caplog.at_level("INFO", logger="backend.runtime.execution"):
        assert await run(task_id, args) is Kind.SUCCEEDED
    assert f"atomic run of {task_id} failed; running it leased" in caplog.text

    done = await ledger.get(sessions, task_id)
    assert done is not None and (done.state, done.attempts) == (State.SUCCESS, 1)
    assert done.result["content"] == "after"
    async with sessions() as session:
        saved = await session.scalar(
            select(func.count())
            .select_from(ConversationMessage)
            .where(ConversationMessage.session_id == "dropped")
        )
    assert saved == 2


@pytest.mark.parametrize("name", [TaskName.SAVE_CONVERSATION, "system.sleep"])
async def test_on_postgresql_a_delivery_ahead_of_its_ledger_row_runs_once_the_row_is_there(
    body_settings: Settings, name: str
) -> None:
    """On PostgreSQL the API sends a message while its row is being inserted: a worker
    that gets it first waits for the row (atomic and leased tasks alike)."""
    if body_settings.is_sqlite:
        pytest.skip("on SQLite the API writes the row before it sends the message")
    args = (
        {"session_id": "late-row", "role": "user", "content": "hi", "received_at": NOW}
        if name == TaskName.SAVE_CONVERSATION
        else {"seconds": 0.01, "steps": 1}
    )
    task_id = str(uuid.uuid4())
    sessions = get_session_factory(body_settings)

    async def insert_later() -> None:
        await asyncio.sleep(0.15)
        spec = get_spec(name)
        await ledger.adopt(sessions, task_id=task_id, name=name, queue=spec.queue, args=args)

    inserting = asyncio.ensure_future(insert_later())
    kind = await _run(body_settings, name, args, task_id)
    await inserting

    assert kind is Kind.SUCCEEDED
    run = await ledger.get(sessions, task_id)
    assert run is not None and (run.state, run.attempts) == (State.SUCCESS, 1)


async def test_a_delivery_whose_row_never_comes_is_dropped_without_running(
    body_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The API's insert failed (it answered 503) after the message went: nothing runs. On
    PostgreSQL only after the waits for a late row; on SQLite, where the row comes first,
    at once."""
    args = {"session_id": "no-row", "role": "user", "content": "hi", "received_at": NOW}
    task_id = str(uuid.uuid4())
    started = time.monotonic()

    with caplog.at_level("INFO", logger="backend.runtime.execution"):
        kind = await _run(body_settings, TaskName.SAVE_CONVERSATION, args, task_id)

    assert kind is Kind.SKIPPED
    waited = time.monotonic() - started
    assert waited < sum(ROW_WAITS) if body_settings.is_sqlite else waited >= sum(ROW_WAITS)
    said = "not claimable" if body_settings.is_sqlite else "no such task in the ledger"
    assert f"{task_id}: {said}" in caplog.text
    assert await ledger.get(get_session_factory(body_settings), task_id) is None
    async with get_session_factory(body_settings)() as session:
        saved = await session.scalar(
            select(func.count())
            .select_from(ConversationMessage)
            .where(ConversationMessage.session_id == "no-row")
        )
    assert saved == 0
