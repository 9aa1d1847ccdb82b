"""The status read in the API process: shared reads and the kept view of a finished task."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from backend.config import Settings
from backend.constants import TaskName
from backend.db.engine import get_read_engine
from backend.runtime.celery_config import create_celery_app
from backend.runtime.execution import Kind
from backend.runtime.service import Runtime, TaskNotFound
from tests.test_execution import _accepted, _run


@pytest.fixture
async def runtime(body_settings: Settings) -> AsyncIterator[Runtime]:
    """A Runtime as the API makes it, not started: the status path needs no broker."""
    runtime = Runtime(body_settings, create_celery_app(body_settings), local_fallback=False)
    yield runtime
    await runtime.broker.close()


@contextmanager
def counting_reads(settings: Settings) -> Iterator[dict[str, int]]:
    counts = {"reads": 0}
    engine = get_read_engine(settings.database_url).sync_engine

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            counts["reads"] += 1

    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        yield counts
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)


async def test_polls_of_one_task_arriving_together_share_one_read(
    body_settings: Settings, runtime: Runtime
) -> None:
    task_id = await _accepted(body_settings, TaskName.NOOP, {})

    with counting_reads(body_settings) as counts:
        views = await asyncio.gather(*(runtime.status_view(task_id) for _ in range(50)))
        assert counts["reads"] == 1
        # The next poll reads again: a running task's status is never kept.
        await runtime.status_view(task_id)
        assert counts["reads"] == 2
    assert {v.row.state for v in views} == {"PENDING"} and len({v.etag for v in views}) == 1


async def test_a_finished_tasks_status_is_kept_and_an_unknown_one_is_not_found_by_all(
    body_settings: Settings, runtime: Runtime
) -> None:
    task_id = await _accepted(body_settings, TaskName.NOOP, {})
    assert await _run(body_settings, TaskName.NOOP, {}, task_id) is Kind.SUCCEEDED
    with counting_reads(body_settings) as counts:
        for _ in range(3):
            assert (await runtime.status_view(task_id)).row.state == "SUCCESS"
        assert counts["reads"] == 1

        unknown = str(uuid.uuid4())
        answers = await asyncio.gather(
            *(runtime.status_view(unknown) for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(a, TaskNotFound) for a in answers)
        assert counts["reads"] == 2
