"""A worker's events go out without waiting for Redis's answer, and still arrive: in
order, after Redis restarts, and never at the cost of a task when Redis is gone."""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.constants import EVENTS_STREAM
from backend.runtime.events import TaskEvent
from backend.runtime.stream_writer import StreamWriter
from tests.support import RedisServer, wait_for


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may stop and restart."""
    (tmp_path / "logs").mkdir()
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


def _stream(server: RedisServer) -> list[tuple[str, dict[str, object]]]:
    entries = server.client().xrange(EVENTS_STREAM)
    return [(fields[b"kind"].decode(), json.loads(fields[b"data"])) for _, fields in entries]


def _task(n: int) -> tuple[str, dict[str, object]]:
    return ("task", {"task_id": f"t{n}", "state": "SUCCESS"})


async def test_events_arrive_in_the_order_they_were_written(own_redis: RedisServer) -> None:
    writer = StreamWriter(own_redis.url, timeout=1.0)
    for n in range(50):
        assert await writer.add_events([_task(n), ("notification", {"n": n})])
    expected = [item for n in range(50) for item in (_task(n), ("notification", {"n": n}))]
    wait_for(lambda: len(_stream(own_redis)) == 100, 5, what="the 100 entries")
    assert _stream(own_redis) == expected
    assert own_redis.client().ttl(EVENTS_STREAM) > 0  # the stream still expires when idle
    writer.close()


async def test_the_first_events_after_redis_restarts_are_not_lost(
    own_redis: RedisServer,
) -> None:
    writer = StreamWriter(own_redis.url, timeout=1.0)
    assert await writer.add_events([_task(1)])
    wait_for(lambda: len(_stream(own_redis)) == 1, 5, what="the first entry")
    own_redis.restart_empty()  # the writer's connection is now dead
    assert await writer.add_events([_task(2)])
    wait_for(lambda: _stream(own_redis) == [_task(2)], 5, what="the entry after the restart")
    writer.close()


async def test_with_redis_gone_a_write_fails_fast_and_the_next_one_reconnects(
    own_redis: RedisServer,
) -> None:
    writer = StreamWriter(own_redis.url, timeout=0.5)
    assert await writer.add_events([_task(1)])
    own_redis.kill()
    began = time.monotonic()
    assert not await writer.add_events([_task(2)])
    assert time.monotonic() - began < 1.0
    own_redis.start()
    assert await writer.add_events([_task(3)])
    wait_for(lambda: _stream(own_redis) == [_task(3)], 5, what="the entry after Redis came back")
    writer.close()


def test_an_event_as_a_dict_has_every_field_of_the_event() -> None:
    """``TaskEvent.as_dict`` spells its fields out (asdict deep-copies): a field added to
    the event must not go missing from what listeners get."""
    event = TaskEvent(
        "t1", "system.noop", "SUCCESS", "celery", progress={"current": 1}, error=None, attempt=2
    )
    assert event.as_dict() == dataclasses.asdict(event)


async def test_a_redis_that_stopped_reading_costs_a_write_one_timeout_not_a_hang(
    own_redis: RedisServer,
) -> None:
    writer = StreamWriter(own_redis.url, timeout=0.3)
    assert await writer.add_events([_task(0)])
    assert own_redis.proc is not None
    own_redis.proc.send_signal(signal.SIGSTOP)  # alive, connected, reading nothing
    try:
        big = [("task", {"task_id": "t", "pad": "x" * 200_000})]
        results, slowest = [], 0.0
        for _ in range(200):  # enough to fill the socket's buffers
            began = time.monotonic()
            results.append(await writer.add_events(big))
            slowest = max(slowest, time.monotonic() - began)
            if not results[-1]:
                break
        assert results[-1] is False  # the buffer filled, and the write gave up...
        assert slowest < 1.5  # ...after its timeout, not after Redis came back
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
    assert await writer.add_events([_task(9)])  # on a new connection
    wait_for(lambda: _task(9) in _stream(own_redis), 10, what="the entry after Redis resumed")
    writer.close()
