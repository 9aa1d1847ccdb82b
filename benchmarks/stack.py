"""The stack a benchmark measures: its own redis-server, database, API and one worker."""

from __future__ import annotations

import os
import platform
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import TOKEN, Api, RedisServer, Worker, run_migrations, wait_for


@dataclass
class Stack:
    redis: RedisServer
    api: Api
    worker: Worker
    env: dict[str, str]
    database: str


def describe(stack: Stack, title: str, api_workers: int = 1) -> str:
    return (
        f"# {title} — {platform.node()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, database {stack.database}, "
        f"{api_workers} API process(es), worker concurrency 2"
    )


@contextmanager
def bench_stack(
    database: str, *, api_workers: int = 1, include: str | None = None
) -> Iterator[Stack]:
    work = Path(tempfile.mkdtemp(prefix="syncq-bench-"))
    redis_server = RedisServer(work)
    redis_server.start()
    drop: str | None = None
    if database == "sqlite":
        url = f"sqlite+aiosqlite:///{work / 'bench.db'}"
    else:
        from tests.conftest import POSTGRES_ADMIN_URL, _postgres

        drop = f"syncq_bench_{uuid.uuid4().hex[:8]}"
        _postgres(f'CREATE DATABASE "{drop}"')
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
        url = f"{base.replace('postgresql://', 'postgresql+asyncpg://')}/{drop}"
    env = dict(os.environ) | {
        "REDIS_URL": redis_server.url,
        "DATABASE_URL": url,
        "DATA_DIR": str(work / "data"),
        "API_TOKENS": TOKEN,
        "BROKER_PROBE_TTL": "0.5",
        "LOCAL_QUEUE_SIZE": "100000",
    }
    run_migrations(env)
    api = Api(env, work / "logs", workers=api_workers)
    worker = Worker("bench", env, work / "logs", concurrency=2)
    if include:
        worker.args += ["--include", include]
    try:
        api.start()
        worker.start()
        wait_for(
            lambda: redis_server.client().zscore("syncq:workers", worker.node) is not None,
            30,
            what="worker",
        )
        yield Stack(redis_server, api, worker, env, database)
    finally:
        worker.stop()
        api.stop()
        redis_server.kill()
        if drop:
            from tests.conftest import _postgres

            _postgres(f'DROP DATABASE IF EXISTS "{drop}" WITH (FORCE)')
