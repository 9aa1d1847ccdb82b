"""Live views of the Celery side for /api/system: workers (by broadcast) and queue lengths.

Celery's inspect waits its whole timeout when nobody answers, so the broadcasts run side by
side with a short timeout, and nothing is asked of a broker the probe already knows is down.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from backend.constants import ALL_QUEUES, WORKERS_KEY
from backend.runtime.broker import Broker

INSPECT_TIMEOUT = 1.0
UNACKED_KEY = "unacked"  # kombu's hash of delivered, not yet acknowledged messages


@dataclass
class WorkerView:
    name: str
    ping: bool
    active: list[dict[str, Any]] = field(default_factory=list)
    pool: str | None = None
    concurrency: int | None = None
    queues: list[str] = field(default_factory=list)
    last_seen_seconds: float | None = None


async def workers(broker: Broker, timeout: float = INSPECT_TIMEOUT) -> list[WorkerView]:
    if not broker.up:
        return []
    inspector = broker.celery.control.inspect(timeout=timeout)

    async def ask(method: str) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout + 2):
                answer = await asyncio.to_thread(getattr(inspector, method))
        except Exception:  # no answer, or the broker went away mid-broadcast
            return {}
        return answer or {}

    pings, active, stats, queues = await asyncio.gather(
        ask("ping"), ask("active"), ask("stats"), ask("active_queues")
    )
    seen = await _presence(broker)
    views = []
    for name in sorted(set(pings) | set(active) | set(stats) | set(seen)):
        pool = (stats.get(name) or {}).get("pool") or {}
        views.append(
            WorkerView(
                name=name,
                ping=name in pings,
                active=[
                    {"task_id": t.get("id"), "name": t.get("name"), "started": t.get("time_start")}
                    for t in active.get(name) or []
                ],
                pool=_pool_name(pool.get("implementation")),
                concurrency=pool.get("max-concurrency"),
                queues=[q.get("name") for q in queues.get(name) or [] if q.get("name")],
                last_seen_seconds=seen.get(name),
            )
        )
    return views


def _pool_name(implementation: str | None) -> str | None:
    """'celery.concurrency.prefork:TaskPool' → 'prefork', the name `--pool` takes."""
    if not implementation:
        return None
    return implementation.split(":", 1)[0].rsplit(".", 1)[-1]


async def _presence(broker: Broker) -> dict[str, float]:
    """Workers' own heartbeats (runtime/worker.py): seconds since each was last seen."""
    members: Any
    try:
        members = await broker.redis.zrange(WORKERS_KEY, 0, -1, withscores=True)
    except (RedisError, OSError):
        return {}
    now = time.time()
    return {
        (m.decode() if isinstance(m, bytes) else str(m)): round(now - score, 1)
        for m, score in members
    }


async def queue_lengths(broker: Broker) -> tuple[dict[str, int], int] | None:
    """Messages waiting in each queue (all priority lists summed), and messages delivered
    but unacknowledged; None when Redis does not answer."""
    options = broker.celery.conf.broker_transport_options or {}
    steps = sorted(set(options.get("priority_steps") or [0, 3, 6, 9]))
    sep = options.get("sep", "\x06\x16")
    try:
        pipe = broker.redis.pipeline(transaction=False)
        for queue in ALL_QUEUES:
            for step in steps:
                pipe.llen(f"{queue}{sep}{step}" if step else queue)
        pipe.hlen(UNACKED_KEY)
        sizes = await pipe.execute()
    except (RedisError, OSError):
        return None
    lengths = {
        queue: sum(sizes[i * len(steps) : (i + 1) * len(steps)])
        for i, queue in enumerate(ALL_QUEUES)
    }
    return lengths, int(sizes[-1])
