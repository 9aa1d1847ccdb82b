"""The API pushes task messages itself (runtime/messages.py): what lands in Redis must be what
kombu's own publish would have left there, or a worker would misread it."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis

from backend.config import Settings
from backend.runtime.broker import Broker
from backend.runtime.celery_config import create_celery_app
from backend.runtime.messages import REPR_MAX, _short_repr, celery_priority
from tests.support import RedisServer

# A database of the tests' Redis that no worker consumes from.
SPARE_DB = 13


def _settings(redis_server: RedisServer, workdir: Any) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=redis_server.url.rsplit("/", 1)[0] + f"/{SPARE_DB}",
        database_url=f"sqlite+aiosqlite:///{workdir / 'unused.db'}",
        data_dir=workdir / "data",
    )


def _pushed(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """Every message waiting in any list, by its task id, with the list it waits in."""
    found = {}
    for key in client.scan_iter():
        if client.type(key) != b"list":
            continue
        for raw in client.lrange(key, 0, -1):
            message = json.loads(raw)
            message["list"] = key.decode()
            found[message["headers"]["id"]] = message
    return found


def _comparable(message: dict[str, Any]) -> dict[str, Any]:
    """All but what differs by nature between two sends: the delivery tag (a fresh uuid)
    and the sending process's name."""
    message = json.loads(json.dumps(message))
    del message["properties"]["delivery_tag"]
    del message["headers"]["origin"]
    return message


@pytest.mark.parametrize("priority", [0, 3, 5, 9])
@pytest.mark.parametrize("keep_result", [False, True])
async def test_a_pushed_message_is_the_one_kombu_would_have_sent(
    redis_server: RedisServer, workdir: Any, priority: int, keep_result: bool
) -> None:
    settings = _settings(redis_server, workdir)
    celery = create_celery_app(settings)
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    kwargs = {"session_id": "s-1", "content": "héllo ☃", "n": 3, "nested": {"a": [1, None]}}

    # kombu's way: Celery's message builder and sender, over kombu's Redis transport
    amqp = celery.amqp
    message = amqp.create_task_message(
        "by-kombu", "conversation.save", (), kwargs, ignore_result=not keep_result
    )
    with celery.producer_or_acquire() as producer:
        amqp.send_task_message(
            producer,
            "conversation.save",
            message,
            queue=amqp.queues["database"],
            priority=celery_priority(priority),
            retry=False,
        )
    # ours
    broker = Broker(settings, celery)
    try:
        assert await broker.publish(
            name="conversation.save",
            task_id="by-syncq",
            kwargs=kwargs,
            queue="database",
            priority=priority,
            keep_result=keep_result,
        )
    finally:
        await broker.close()

    pushed = _pushed(client)
    ours, theirs = _comparable(pushed["by-syncq"]), _comparable(pushed["by-kombu"])
    # Flower's view of the arguments: ours is plain repr, Celery's escapes non-ASCII.
    assert ours["headers"].pop("kwargsrepr") == repr(kwargs)
    assert theirs["headers"].pop("kwargsrepr")
    for message in (ours, theirs):  # the ids are the one intended difference
        message["headers"]["id"] = message["headers"]["root_id"] = "ID"
        message["properties"]["correlation_id"] = "ID"
        message["body"] = "BODY"  # compared decoded below
    assert ours == theirs
    assert ours["list"] == ("database" if priority == 9 else f"database:{9 - priority}")

    decoded = {
        task_id: json.loads(base64.b64decode(pushed[task_id]["body"]))
        for task_id in ("by-syncq", "by-kombu")
    }
    assert decoded["by-syncq"] == decoded["by-kombu"]
    assert decoded["by-syncq"][1] == kwargs
    client.flushdb()


async def test_a_refused_push_marks_the_broker_down(
    redis_server: RedisServer, workdir: Any
) -> None:
    """Redis answered but would not take the message (here: the list's key holds a string),
    so the task must go elsewhere."""
    settings = _settings(redis_server, workdir)
    celery = create_celery_app(settings)
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    client.set("database:4", "not a list")
    broker = Broker(settings, celery)
    try:
        await broker.probe()
        assert broker.up
        sent = await broker.publish(
            name="conversation.save", task_id="t", kwargs={}, queue="database", priority=5
        )
        assert not sent and not broker.up
    finally:
        await broker.close()
        client.flushdb()


async def test_the_first_publish_after_redis_restarted_goes_through(
    redis_server: RedisServer, workdir: Any
) -> None:
    """Every pooled connection died with the old Redis; the publish must not take the dead
    connection's error for a dead broker (it would send the task to the local executor)."""
    settings = _settings(redis_server, workdir)
    broker = Broker(settings, create_celery_app(settings))
    publish = {"name": "system.noop", "kwargs": {}, "queue": "default", "priority": 5}
    try:
        await broker.probe()
        assert await broker.publish(task_id="before", **publish)
        redis_server.restart_empty()
        assert await broker.publish(task_id="after", **publish)
        assert broker.up
        assert set(_pushed(redis.Redis.from_url(settings.redis_url))) == {"after"}
    finally:
        await broker.close()
        redis.Redis.from_url(settings.redis_url).flushdb()


def test_flower_sees_at_most_celerys_length_of_the_arguments() -> None:
    shown = _short_repr({"content": "x" * 5000})
    assert len(shown) == REPR_MAX and shown.startswith("{'content': 'xxx") and shown[-3:] == "..."
    assert _short_repr({"n": 1}) == "{'n': 1}"
