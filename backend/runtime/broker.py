"""The broker as the API process sees it: a cached health probe and a bounded publish.

Celery's publish retries and kombu's connection retries can hang ``send_task`` for seconds
(or forever) when Redis is gone. The request path therefore never waits on Redis: it reads
the cached health, refreshed in the background, and a failed publish marks the broker down
at once so the caller falls back to the local executor.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from celery import Celery
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from backend.config import Settings
from backend.constants import BROKER_EPOCH_KEY, EVENTS_STREAM, WORKERS_KEY
from backend.runtime.events import STREAM_MAXLEN, STREAM_TTL_SECONDS, stream_fields
from backend.runtime.messages import task_payload

log = logging.getLogger(__name__)

WORKER_SEEN_WITHIN = 15.0
PROBE_MISSES_FOR_DOWN = 2


# The broker state this process last logged. Process-wide, not per ``Broker``: the
# scheduled recovery sweep makes a new Broker every time, and each started out "down", so
# every sweep logged "broker is up". Now a process says it only when the state changes.
_logged_up: bool | None = None


def _log_state(up: bool, why: str = "") -> None:
    global _logged_up
    if up == _logged_up:
        return
    first, _logged_up = _logged_up is None, up
    if up:
        # Up from the start is no news (and each prefork child would repeat it).
        log.log(
            logging.DEBUG if first else logging.INFO, "broker is up%s", "" if first else " again"
        )
    else:
        log.warning("broker is down%s", why)


# A run's events (and the stream's expiry) in one command: as a pipeline of XADD, XADD,
# EXPIRE they cost a worker process 14 % of its time in redis-py's pipeline machinery
# (py-spy), far more than Redis spends on them. ARGV: maxlen, ttl, then kind, data pairs.
APPEND_EVENTS = """
for i = 3, #ARGV, 2 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'kind', ARGV[i], 'data', ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


# A task message and its events in one command. KEYS: the queue's list, the stream; ARGV:
# the message, maxlen, ttl, then kind, data pairs. As a pipeline (LPUSH, XADD, EXPIRE),
# redis-py's Pipeline.execute was 43 % of the API's samples in publish (py-spy, 1 conn).
PUBLISH_WITH_EVENTS = """
redis.call('LPUSH', KEYS[1], ARGV[1])
for i = 4, #ARGV, 2 do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'kind', ARGV[i], 'data', ARGV[i + 1])
end
if #ARGV > 3 then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
return 1
"""


def event_args(items: Sequence[tuple[str, dict[str, Any]]]) -> list[Any]:
    args: list[Any] = [STREAM_MAXLEN, STREAM_TTL_SECONDS]
    for kind, data in items:
        args += stream_fields(kind, data).values()
    return args


class Broker:
    def __init__(self, settings: Settings, celery: Celery) -> None:
        self.settings = settings
        self.celery = celery
        self._redis = aioredis.Redis.from_url(
            settings.celery_broker_url,
            socket_connect_timeout=settings.broker_probe_timeout,
            socket_timeout=settings.broker_probe_timeout,
            retry_on_timeout=False,
        )
        self._append_events = self._redis.register_script(APPEND_EVENTS)
        self._up = False
        self._misses = 0
        self._checked_at = float("-inf")
        self._probe_lock = asyncio.Lock()
        self._refresh: asyncio.Task[bool] | None = None
        # Publishing has the probe's connect timeout (a dead Redis is known at once) but a
        # longer read timeout: a busy loop must not turn a slow answer into "broker down".
        # One immediate retry on a new connection: after Redis restarts, every pooled
        # connection is dead, and the first publish on each must not mark Redis down.
        self._sender = aioredis.Redis.from_url(
            settings.celery_broker_url,
            socket_connect_timeout=settings.broker_probe_timeout,
            socket_timeout=settings.broker_publish_timeout,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._publish = self._sender.register_script(PUBLISH_WITH_EVENTS)

    @property
    def redis(self) -> aioredis.Redis:
        """The short-timeout client, for quick reads (presence, queue lengths)."""
        return self._redis

    @property
    def up(self) -> bool:
        """The last known health, never waiting. A stale answer starts a background probe."""
        if time.monotonic() - self._checked_at > self.settings.broker_probe_ttl:
            self._start_refresh()
        return self._up

    def _start_refresh(self) -> None:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self.probe())

    async def probe(self) -> bool:
        """Ping Redis. One failed ping does not make an up broker down: on a busy machine
        a ping can miss its short timeout while Redis is fine, and a flap would send work
        to the local executor for nothing. A failed publish still marks it down at once."""
        async with self._probe_lock:
            try:
                await self._redis.ping()
                answered = True
            except (RedisError, OSError):
                answered = False
            self._misses = 0 if answered else self._misses + 1
            up = answered or (self._up and self._misses < PROBE_MISSES_FOR_DOWN)
            _log_state(up)
            self._up, self._checked_at = up, time.monotonic()
            return up

    def mark_down(self) -> None:
        _log_state(False, " (publish failed)")
        self._up, self._checked_at = False, time.monotonic()

    async def publish(
        self,
        *,
        name: str,
        task_id: str,
        kwargs: dict[str, Any],
        queue: str,
        priority: int,
        keep_result: bool = False,
        events: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> bool:
        """Send the task message, and ``events`` for the stream in the same round trip;
        False (and the broker marked down) when Redis did not take the message.

        The message is pushed the way kombu's transport would (runtime/messages.py), on
        the loop, in one command with the events: no publisher thread, no second trip.
        """
        key, payload = task_payload(
            self.celery,
            name=name,
            task_id=task_id,
            kwargs=kwargs,
            queue=queue,
            priority=priority,
            keep_result=keep_result,
        )
        try:
            # Refused (out of memory, say), the LPUSH fails the script before anything is
            # written; a retry after a lost reply may push the message twice, which the
            # claim makes harmless.
            await self._publish(keys=[key, EVENTS_STREAM], args=[payload, *event_args(events)])
        except (RedisError, OSError) as exc:
            log.warning("publish of %s failed: %s", task_id, exc)
            self.mark_down()
            return False
        return True

    async def add_events(self, items: Sequence[tuple[str, dict[str, Any]]]) -> bool:
        """Append to the capped events stream in one command; False when Redis did not
        take them."""
        if not items:
            return True
        try:
            await self._append_events(keys=[EVENTS_STREAM], args=event_args(items))
        except (RedisError, OSError):
            return False
        return True

    async def lost_its_data(self) -> bool:
        """True once after Redis came back empty: the epoch key we leave there is gone.

        Queued messages vanished with it, so every waiting Celery task needs a new one.
        """
        try:
            created = await self._redis.set(
                BROKER_EPOCH_KEY, uuid.uuid4().hex, nx=True, ex=30 * 24 * 3600
            )
        except (RedisError, OSError):
            return False
        return bool(created)

    async def take_dead_workers(self) -> float | None:
        """Workers that stopped beating without leaving (kill -9, a lost machine): each is
        removed from the presence set by exactly one caller (ZREM answers 1 once), who gets
        the latest time any of them was seen (unix seconds); None when there are none."""
        dead: Any
        try:
            dead = await self._redis.zrangebyscore(
                WORKERS_KEY, "-inf", time.time() - WORKER_SEEN_WITHIN, withscores=True
            )
            seen = [score for node, score in dead if await self._redis.zrem(WORKERS_KEY, node)]
        except (RedisError, OSError):
            return None
        return float(max(seen)) if seen else None

    async def worker_count(self) -> int:
        try:
            return int(
                await self._redis.zcount(WORKERS_KEY, time.time() - WORKER_SEEN_WITHIN, "+inf")
            )
        except (RedisError, OSError):
            return 0

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        await self._redis.aclose()
        await self._sender.aclose()
