"""The ledger's hot statements run on SQLite's driver directly (db/prepared.py): the rows
they write and the values they return must be exactly those of SQLAlchemy's ``execute``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from backend.db.engine import get_insert_engine, make_engine
from backend.db.models import Notification, TaskRun
from backend.db.models.base import Base
from backend.db.prepared import Prepared
from backend.db.queries import notifications
from backend.runtime import ledger
from tests.conftest import scratch_database

SUBMITTED = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
async def engines(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """Two SQLite files, one for each way of running the same statements."""
    made = []
    for name in ("prepared", "execute"):
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / name}.db", inline=True)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
            await conn.execute(
                TaskRun.__table__.insert(),
                [{
                    "id": "t1", "name": "conversation.save_conversation", "queue": "database",
                    "state": "PENDING", "priority": 5, "args": {"a": 1}, "executor": "celery",
                    "attempts": 0, "recoveries": 0, "cancel_requested": False,
                    "submitted_at": SUBMITTED, "dispatched_at": SUBMITTED,
                }],
            )  # fmt: skip
        made.append(engine)
    yield made[0], made[1]
    for engine in made:
        await engine.dispose()


async def _run_life(engine: AsyncEngine, prepared: bool) -> tuple[object, object, object]:
    """Claim, finish and notify one run, by either path; what each step answered."""
    claim = {
        "task_id": "t1", "token": "tok", "runner": "w:1", "executor": "celery",
        "now": SUBMITTED + timedelta(seconds=1), "stale_before": SUBMITTED,
    }  # fmt: skip
    finish = {
        "task_id": "t1", "token": "tok", "state": "SUCCESS",
        "result": {"text": "héllo 你好", "n": [1, 2.5, None]}, "error": None,
        "now": SUBMITTED + timedelta(seconds=2),
    }  # fmt: skip
    notice = notifications.values_for(
        task_id="t1", task_name="conversation.save_conversation", state="SUCCESS",
        error=None, at=SUBMITTED + timedelta(seconds=2),
    )  # fmt: skip
    async with engine.connect() as conn, conn.begin():
        if prepared:
            claimed = (await ledger._CLAIM_PREPARED.rows(conn, claim))[0]
            ended = (await ledger._FINISH_PREPARED.rows(conn, finish))[0]
            recorded = (await Prepared(notifications._RECORD["sqlite"]).rows(conn, notice))[0]
        else:
            claimed = tuple((await conn.execute(ledger._CLAIM, claim)).one())
            ended = tuple((await conn.execute(ledger._FINISH, finish)).one())
            recorded = tuple((await conn.execute(notifications._RECORD["sqlite"], notice)).one())
    return claimed, ended, recorded


async def test_prepared_statements_write_and_return_what_execute_does(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    fast, slow = engines
    assert await _run_life(fast, prepared=True) == await _run_life(slow, prepared=False)

    async def stored(engine: AsyncEngine) -> list[object]:
        async with engine.connect() as conn:
            runs = (await conn.execute(select(TaskRun.__table__))).all()
            notes = (await conn.execute(select(Notification.__table__))).all()
            raw = (await conn.exec_driver_sql("SELECT started_at, result FROM task_runs")).all()
        return [runs, notes, raw]

    assert await stored(fast) == await stored(slow)
    runs, _, raw = await stored(fast)
    assert runs[0].started_at == SUBMITTED + timedelta(seconds=1)
    assert runs[0].started_at.tzinfo is not None
    assert raw[0][0] == "2026-11-30 12:00:01.123456"  # SQLAlchemy's own storage format


async def test_a_claim_that_matches_nothing_returns_no_row(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    fast, _ = engines
    await _run_life(fast, prepared=True)
    async with fast.connect() as conn, conn.begin():
        again = await ledger.claim_in(
            conn, task_id="t1", token="t2", runner="w:2", executor="celery",
            lease=timedelta(seconds=30),
        )  # fmt: skip
    assert again is None


def _submitted(task_id: str, key: str | None) -> dict[str, object]:
    """A ledger row as ``ledger.insert_run`` hands it to the Inserter."""
    return {
        "id": task_id, "name": "conversation.save_conversation", "queue": "database",
        "state": "PENDING", "priority": 7, "args": {"content": "héllo 你好", "n": [1, 2.5, None]},
        "executor": "celery", "attempts": 0, "recoveries": 0, "cancel_requested": False,
        "idempotency_key": key, "submitted_at": SUBMITTED, "dispatched_at": SUBMITTED,
    }  # fmt: skip


async def test_the_inserters_lock_free_insert_writes_what_execute_does(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    """The API's submissions on SQLite go in on sqlite3 itself when the lock is free."""
    fast, slow = engines
    rows = [_submitted("t2", None), _submitted("t3", "save:k1")]
    async with fast.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection.raw
        raw.execute("BEGIN IMMEDIATE")
        ledger._INSERT_PREPARED.run_many(raw, conn.dialect, rows)
        raw.execute("COMMIT")
    async with slow.begin() as conn:
        await conn.execute(ledger._INSERT_RUN, rows)

    async def stored(engine: AsyncEngine) -> list[object]:
        async with engine.connect() as conn:
            runs = (await conn.execute(select(TaskRun.__table__).order_by(TaskRun.id))).all()
            raw = (await conn.exec_driver_sql("SELECT * FROM task_runs ORDER BY id")).all()
        return [runs, raw]

    assert await stored(fast) == await stored(slow)
    runs, _ = await stored(fast)
    assert [run.args for run in runs[1:]] == [rows[0]["args"], rows[1]["args"]]
    assert runs[2].submitted_at == SUBMITTED and runs[2].cancel_requested is False


async def test_a_row_the_lock_free_insert_refuses_is_sqlalchemys_integrity_error(
    tmp_path: Path,
) -> None:
    """A duplicate idempotency key breaks the lock-free insert's constraint; the Inserter
    then writes the SQLAlchemy way, so its caller sees the IntegrityError it handles (and
    the connection it keeps still works for the next row)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    engine = make_engine(url, inline=True)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    inserter = ledger.Inserter(sessions)
    try:
        await inserter.add(_submitted("a", "save:k1"))
        kept = inserter._kept
        assert kept is not None  # written the lock-free way
        with pytest.raises(IntegrityError):
            await inserter.add(_submitted("b", "save:k1"))
        await inserter.add(_submitted("c", "save:k2"))
        assert inserter._kept is kept  # the same connection, out of its transaction
        assert not kept[1].in_transaction
        async with engine.connect() as conn:
            ids = (await conn.execute(select(TaskRun.id).order_by(TaskRun.id))).scalars().all()
        assert ids == ["a", "c"]
    finally:
        await inserter.close()
        await engine.dispose()


@pytest.fixture
async def pg_sessions(tmp_path: Path) -> AsyncIterator[ledger.Sessions]:
    """A new PostgreSQL database with the ledger's tables (skipped when none is reachable)."""
    with scratch_database("postgresql", tmp_path) as url:
        engine = make_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        try:
            yield async_sessionmaker(engine, expire_on_commit=False)
        finally:
            await engine.dispose()
            await get_insert_engine(url).dispose()


async def _stored_runs(sessions: ledger.Sessions) -> list[object]:
    async with ledger.engine_of(sessions).connect() as conn:
        runs = (await conn.execute(select(TaskRun.__table__).order_by(TaskRun.id))).all()
        raw = (await conn.exec_driver_sql("SELECT * FROM task_runs ORDER BY id")).all()
    return [runs, raw]


async def test_the_inserters_asyncpg_insert_writes_what_execute_does(
    pg_sessions: ledger.Sessions,
) -> None:
    """The API's submissions on PostgreSQL go in by asyncpg's executemany: the rows must be
    those SQLAlchemy's execute writes (compared with a second pair written that way)."""
    inserter = ledger.Inserter(pg_sessions)
    try:
        await inserter._write([_submitted("a2", None), _submitted("a3", "save:k1")])
        assert inserter._kept is not None  # written on asyncpg
    finally:
        await inserter.close()
    async with ledger.engine_of(pg_sessions).begin() as conn:
        await conn.execute(ledger._INSERT_RUN, [_submitted("b2", None), _submitted("b3", "k2")])
    runs, raw = await _stored_runs(pg_sessions)

    def apart_from_ids(row: Any) -> dict[str, object]:
        return {k: v for k, v in row._mapping.items() if k not in ("id", "idempotency_key")}

    for rows in (runs, raw):
        assert [apart_from_ids(row) for row in rows[:2]] == [
            apart_from_ids(row) for row in rows[2:]
        ]
    assert [run.idempotency_key for run in runs] == [None, "save:k1", None, "k2"]
    assert runs[0].args == {"content": "héllo 你好", "n": [1, 2.5, None]}
    assert runs[1].submitted_at == SUBMITTED and runs[1].cancel_requested is False


async def test_a_refused_asyncpg_insert_is_an_integrity_error_and_a_lost_one_is_sent_again(
    pg_sessions: ledger.Sessions,
) -> None:
    """A duplicate idempotency key: nothing of the batch goes in (executemany is atomic),
    and SQLAlchemy's way raises the IntegrityError the caller handles, the kept connection
    still in use. The kept connection killed by the server: the next rows go in once, on
    a new one."""
    inserter = ledger.Inserter(pg_sessions)
    try:
        await inserter.add(_submitted("a", "save:k1"))
        kept = inserter._kept
        assert kept is not None
        with pytest.raises(IntegrityError):
            await inserter._write([_submitted("b", None), _submitted("c", "save:k1")])
        await inserter.add(_submitted("d", None))
        assert inserter._kept is kept
        pid = kept[1].get_server_pid()
        async with ledger.engine_of(pg_sessions).connect() as conn:
            await conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        await inserter.add(_submitted("e", None))
        assert inserter._kept is None  # forgotten; the rows went in SQLAlchemy's way
        await inserter.add(_submitted("f", None))
        assert inserter._kept is not None and inserter._kept[1].get_server_pid() != pid
    finally:
        await inserter.close()
    runs, _ = await _stored_runs(pg_sessions)
    assert [run.id for run in runs] == ["a", "d", "e", "f"]


async def test_closing_the_inserter_lets_an_asyncpg_write_in_flight_end_first(
    pg_sessions: ledger.Sessions,
) -> None:
    """A runtime that stops while a submission's insert is under way: ``close`` returns
    once that insert has ended (its row is in), and only then gives the kept connection
    back to the pool."""
    inserter = ledger.Inserter(pg_sessions)
    await inserter.add(_submitted("a", None))  # the connection is kept
    pending = asyncio.ensure_future(inserter.add(_submitted("b", None)))
    await asyncio.sleep(0)  # the flush has started
    await inserter.close()
    assert pending.done() and pending.exception() is None
    assert inserter._kept is None
    runs, _ = await _stored_runs(pg_sessions)
    assert [run.id for run in runs] == ["a", "b"]
