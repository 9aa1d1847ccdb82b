"""The worker's kombu transport (runtime/transport.py) keeps one Redis client per channel and
still moves messages both ways."""

from __future__ import annotations

from pathlib import Path

import redis

from backend.config import Settings
from backend.runtime.celery_config import create_celery_app
from backend.runtime.transport import Transport
from tests.support import RedisServer

SPARE_DB = 14  # no worker consumes from it


def test_a_channel_reuses_its_client_and_still_sends_and_receives(
    redis_server: RedisServer, workdir: Path
) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{SPARE_DB}"
    settings = Settings(_env_file=None, redis_url=url, data_dir=workdir / "data")  # type: ignore[call-arg]
    app = create_celery_app(settings)
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)
        channel = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        pool = channel.pool
        channel._pool = None  # what kombu does when it drops its pools
        with channel.conn_or_acquire() as renewed:
            assert renewed is not first and renewed.connection_pool is not pool

        queue = conn.SimpleQueue("transport-check")
        queue.put({"n": 1})
        message = queue.get(timeout=5)
        assert message.payload == {"n": 1}
        message.ack()
        queue.close()
    redis.Redis.from_url(url).flushdb()
