"""Fixtures: a real redis-server on a free port, a real database (SQLite file, and
PostgreSQL when one is reachable), the API as a uvicorn process, and Celery workers made
on demand. The whole suite runs once per database."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from backend.config import Settings
from backend.db.engine import dispose_engines
from tests.browser import browser  # noqa: F401  (the Chromium fixture: tests/browser.py)
from tests.helpers import EventStream
from tests.support import (
    RETIRING,
    TOKEN,
    Api,
    Beat,
    RedisServer,
    Worker,
    run_migrations,
    serving_worker,
    wait_for,
)

POSTGRES_ADMIN_URL = os.environ.get(
    "SYNCQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

# Short leases and sweeps so faults are recovered within seconds, not minutes.
FAST_TIMINGS = {
    "LEASE_SECONDS": "3",
    "HEARTBEAT_SECONDS": "0.5",
    "RECOVERY_INTERVAL_SECONDS": "1",
    "PENDING_REDISPATCH_SECONDS": "300",
    "BROKER_PROBE_TTL": "0.5",
    "TASK_RETRY_BACKOFF_MAX": "1",
    "SCHEDULE_RECOVERY_SECONDS": "1",
    "REDBEAT_LOCK_TIMEOUT": "4",
}


def _postgres(sql: str, database_url: str = POSTGRES_ADMIN_URL) -> None:
    """Run one statement on its own loop in its own thread, so async fixtures can call it."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(database_url, timeout=3)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def postgres_reachable() -> bool:
    try:
        _postgres("SELECT 1")
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("syncq")


@pytest.fixture(scope="session")
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir)
    server.start()
    yield server
    RETIRING.wait()
    server.kill()


@contextmanager
def scratch_database(kind: str, workdir: Path) -> Iterator[str]:
    """A new empty database of this kind (a SQLite file, or a PostgreSQL database dropped
    afterwards); skips when PostgreSQL is not reachable."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / f'syncq-{uuid.uuid4().hex[:8]}.db'}"
        return
    if not postgres_reachable():
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}")
    name = f"syncq_test_{uuid.uuid4().hex[:10]}"
    _postgres(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        _postgres(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, workdir: Path) -> Iterator[str]:
    with scratch_database(request.param, workdir) as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def body_settings(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
) -> AsyncIterator[Settings]:
    """Settings for running task bodies in this process (backend/runtime/inprocess.py):
    a migrated database of their own, a DATA_DIR of their own, the tests' Redis."""
    work = tmp_path_factory.mktemp("bodies")
    with scratch_database(request.param, work) as url:
        env = dict(os.environ) | {"DATABASE_URL": url, "REDIS_URL": redis_server.url}
        run_migrations(env)
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=url,
            redis_url=redis_server.url,
            data_dir=work / "data",
            api_tokens=[TOKEN],
        )
        yield settings
        await dispose_engines()


@pytest.fixture(scope="session")
def stack_env(redis_server: RedisServer, database_url: str, workdir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REDIS_", "CELERY_", "DATABASE_", "API_"))
    }
    env |= FAST_TIMINGS | {
        "REDIS_URL": redis_server.url,
        "DATABASE_URL": database_url,
        "DATA_DIR": str(workdir / "data"),
        "API_TOKENS": f"{TOKEN},second-token",
        "PYTHONUNBUFFERED": "1",
    }
    if not redis_server.alive:  # the previous database's last test may have stopped it
        redis_server.start()
    redis_server.client().flushall()
    run_migrations(env)
    return env


@pytest.fixture(scope="session")
def api(stack_env: dict[str, str], workdir: Path) -> Iterator[Api]:
    server = Api(stack_env, workdir / "logs")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_up(redis_server: RedisServer) -> RedisServer:
    """Every test starts with Redis running, whatever the previous test did to it."""
    if not redis_server.alive:
        redis_server.start()
    return redis_server


@pytest.fixture
def client(api: Api, redis_up: RedisServer) -> Iterator[httpx.Client]:
    with api.client() as c:
        wait_for(lambda: c.get("/health").json()["broker"] == "up", 10, what="broker up")
        yield c


StartWorker = Callable[..., Worker]


@pytest.fixture
def start_worker(
    stack_env: dict[str, str], workdir: Path, redis_up: RedisServer
) -> Iterator[StartWorker]:
    """Start a real Celery worker (prefork) and wait until it is serving."""
    started: list[Worker] = []

    def start(
        concurrency: int = 1, env: dict[str, str] | None = None, pool: str | None = None
    ) -> Worker:
        name = f"w{uuid.uuid4().hex[:6]}"
        worker = serving_worker(
            name, stack_env | (env or {}), workdir / "logs", redis_up, concurrency, pool
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        RETIRING.add(worker)


@pytest.fixture(scope="session")
def small_uploads_api(stack_env: dict[str, str], workdir: Path) -> Iterator[Api]:
    server = Api(stack_env | {"MAX_UPLOAD_BYTES": "1000"}, workdir / "logs", name="api-small")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def api_env_small_uploads(small_uploads_api: Api, redis_up: RedisServer) -> Iterator[httpx.Client]:
    with small_uploads_api.client() as c:
        yield c


StartBeat = Callable[[], Beat]


@pytest.fixture
def start_beat(
    stack_env: dict[str, str], workdir: Path, redis_up: RedisServer
) -> Iterator[StartBeat]:
    """Start a real `celery beat` on RedBeat; all are stopped after the test."""
    started: list[Beat] = []

    def start() -> Beat:
        beat = Beat(uuid.uuid4().hex[:6], stack_env, workdir / "logs")
        beat.start()
        started.append(beat)
        return beat

    yield start
    for beat in started:
        beat.stop()


OpenEvents = Callable[..., EventStream]


@pytest.fixture
def open_events(client: httpx.Client) -> Iterator[OpenEvents]:
    """Open SSE streams on GET /api/events (each read in a thread); closed after the test."""
    streams: list[EventStream] = []

    def open_stream(**kwargs: object) -> EventStream:
        stream = EventStream(client, **kwargs)  # type: ignore[arg-type]
        streams.append(stream)
        return stream

    yield open_stream
    for stream in streams:
        stream.close()
