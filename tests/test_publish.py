"""The API's publish: a task message and its events in one command, and what happens when
Redis refuses it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from backend.config import Settings
from backend.constants import EVENTS_STREAM
from backend.db.engine import make_unpooled_engine
from backend.runtime.broker import Broker
from backend.runtime.celery_config import create_celery_app
from backend.runtime.messages import queue_key
from backend.runtime.service import RESEND_AFTER_SECONDS, Runtime
from tests.support import TOKEN, RedisServer


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[tuple[Broker, RedisServer]]:
    (tmp_path / "logs").mkdir()
    server = RedisServer(tmp_path)
    server.start()
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=server.url,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}",
        api_tokens=[TOKEN],
    )
    made = Broker(settings, create_celery_app(settings))
    assert await made.probe()
    yield made, server
    await made.close()
    server.kill()


async def _publish(broker: Broker, task_id: str) -> bool:
    return await broker.publish(
        name="system.noop", task_id=task_id, kwargs={}, queue="default", priority=5,
        events=[("task", {"task_id": task_id, "state": "PENDING"})],
    )  # fmt: skip


async def test_the_message_and_its_event_arrive_together(
    broker: tuple[Broker, RedisServer],
) -> None:
    b, server = broker
    assert await _publish(b, "t1")
    r = server.client()
    [message] = r.lrange(queue_key(b.celery, "default", 4), 0, -1)
    assert json.loads(message)["headers"]["id"] == "t1"
    [(_, fields)] = r.xrange(EVENTS_STREAM)
    assert json.loads(fields[b"data"]) == {"task_id": "t1", "state": "PENDING"}
    assert r.ttl(EVENTS_STREAM) > 0


async def test_a_message_redis_refuses_marks_the_broker_down_and_writes_nothing(
    broker: tuple[Broker, RedisServer],
) -> None:
    b, server = broker
    r = server.client()
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", "1")  # every write is now refused (OOM)
    assert not await _publish(b, "t2")
    assert not b.up  # the caller runs the task locally instead
    assert r.dbsize() == 0
    r.config_set("maxmemory", "0")
    assert await _publish(b, "t3")


async def test_on_postgresql_a_message_sent_before_a_slow_insert_ended_is_sent_again(
    body_settings: Settings, redis_server: RedisServer
) -> None:
    """A worker handed the message while the row was not in may have dropped it by the
    time a slow insert commits (execution.ROW_WAITS): the submission sends it again."""
    if body_settings.is_sqlite:
        pytest.skip("on SQLite the API writes the row before it sends the message")
    spare = redis_server.url.rsplit("/", 1)[0] + "/14"  # no worker consumes from it
    settings = body_settings.model_copy(
        update={"redis_url": spare, "celery_broker_url": spare, "celery_result_backend": spare}
    )
    runtime = Runtime(settings, create_celery_app(settings), local_fallback=False)
    assert await runtime.broker.probe()
    r = redis.Redis.from_url(spare)
    r.flushdb()
    queue = queue_key(runtime.celery, "default", 4)
    engine = make_unpooled_engine(settings.database_url)
    try:
        quick = await runtime.submit("system.noop")
        assert _ids(r.lrange(queue, 0, -1)) == [quick.run.id]

        async with engine.connect() as conn, conn.begin():
            # Inserts wait for this lock until the transaction ends.
            await conn.execute(text("LOCK TABLE task_runs IN SHARE ROW EXCLUSIVE MODE"))
            submitting = asyncio.ensure_future(runtime.submit("system.noop"))
            await asyncio.sleep(RESEND_AFTER_SECONDS + 0.3)
            assert not submitting.done()
            early = _ids(r.lrange(queue, 0, -1))
        slow = await submitting

        assert early == [slow.run.id, quick.run.id]  # sent before its row was in
        assert _ids(r.lrange(queue, 0, -1)) == [slow.run.id, slow.run.id, quick.run.id]
        assert (await runtime.status(slow.run.id)).state == "PENDING"
    finally:
        await engine.dispose()
        await runtime.stop()
        r.flushdb()


def _ids(messages: list[bytes]) -> list[str]:
    return [json.loads(m)["headers"]["id"] for m in messages]
