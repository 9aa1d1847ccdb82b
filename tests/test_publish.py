"""The API's publish: a task message and its events in one command, and what happens when
Redis refuses it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backend.config import Settings
from backend.constants import EVENTS_STREAM
from backend.runtime.broker import Broker
from backend.runtime.celery_config import create_celery_app
from backend.runtime.messages import queue_key
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
