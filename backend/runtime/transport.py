"""kombu's Redis transport with one Redis client object per channel, not one per command.

kombu's Redis channel builds a new ``redis.Redis`` around its connection pool for every
command it sends outside the consume loop: each message's ack, each prefetched message's
entry in the unacked index. In redis-py 8 building a client builds its response-callback
table, and that was 18 % of a busy worker's consumer process (py-spy, 10 connections of
conversation saves). The client holds no state of its own beyond the pool it wraps, so
one per channel (renewed when the channel renews its pool) does the same work.

Used for ``redis://`` brokers (runtime/celery_config.py); other schemes keep kombu's own.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

TRANSPORT = "backend.runtime.transport:Transport"


class Channel(kombu_redis.Channel):
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
