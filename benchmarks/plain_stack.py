"""The plain pattern's processes beside a syncq bench stack: same Redis server (DB 1),
same kind of database (its own SQLite file or scratch PostgreSQL database), the API with
the flags of tests.support.Api and a worker with those of tests.support.Worker.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from benchmarks.plain_pattern.db import Base, make_engine
from benchmarks.stack import Stack
from tests.support import QUEUES, Api, Worker

PSYCOPG2_HINT = (
    "the plain pattern on PostgreSQL needs psycopg2 (dev extras): .venv/bin/pip install -e .[dev]"
)


def sync_url(async_url: str) -> str:
    """syncq's async database URL as a sync SQLAlchemy URL (stdlib sqlite3, psycopg2)."""
    return async_url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg2")


def require_psycopg2() -> None:
    if importlib.util.find_spec("psycopg2") is None:
        print(PSYCOPG2_HINT, file=sys.stderr)
        raise SystemExit(2)


@dataclass
class PlainStack:
    api: Api
    worker: Worker
    redis_url: str
    engine: Engine


def _swap(args: list[str], old: str, new: str) -> None:
    args[args.index(old)] = new


@contextmanager
def plain_stack(stack: Stack) -> Iterator[PlainStack]:
    work = Path(stack.env["DATA_DIR"]).parent
    redis_url = stack.redis.url.rsplit("/", 1)[0] + "/1"
    drop: str | None = None
    if stack.database == "sqlite":
        url = f"sqlite:///{work / 'plain.db'}"
    else:
        from tests.conftest import POSTGRES_ADMIN_URL, _postgres

        drop = f"plain_bench_{uuid.uuid4().hex[:8]}"
        _postgres(f'CREATE DATABASE "{drop}"')
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
        url = f"{base.replace('postgresql://', 'postgresql+psycopg2://')}/{drop}"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    env = stack.env | {"PLAIN_REDIS_URL": redis_url, "PLAIN_DATABASE_URL": url}
    api = Api(env, work / "logs", name="plain-api")
    api.args += ["--app", "benchmarks.plain_pattern.app:app"]
    worker = Worker("plain", env, work / "logs", concurrency=2)
    _swap(worker.args, "backend.celery_app", "benchmarks.plain_pattern.celery_app")
    _swap(worker.args, QUEUES, "celery")
    try:
        api.start()
        worker.start()
        yield PlainStack(api, worker, redis_url, engine)
    finally:
        worker.stop()
        api.stop()
        engine.dispose()
        if drop:
            from tests.conftest import _postgres

            _postgres(f'DROP DATABASE IF EXISTS "{drop}" WITH (FORCE)')
